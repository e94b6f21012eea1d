//! Resolving a container user spec (`name`, `uid`, `name:group`, `uid:gid`)
//! through the image's `/etc/passwd` and `/etc/group`.

/// Errors of user resolution.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The user name is not in `/etc/passwd`.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// The group name is not in `/etc/group`.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (includes the primary group).
    pub groups: Vec<u32>,
    /// Home directory, from the passwd entry (`/` when there is none).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn passwd(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    lines(text).filter_map(|f| {
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or("/"),
        })
    })
}

fn group(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    lines(text).filter_map(|f| {
        Some(GroupEntry {
            name: f.first()?,
            gid: f.get(2)?.parse().ok()?,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

fn group_id(spec: &str, group_text: &str) -> Result<u32> {
    if let Ok(gid) = spec.parse() {
        return Ok(gid);
    }
    group(group_text)
        .find(|g| g.name == spec)
        .map(|g| g.gid)
        .ok_or_else(|| Error::NoGroup(spec.to_string()))
}

/// Resolves `spec` (empty for root) and `additional` groups against the
/// contents of `/etc/passwd` and `/etc/group` (empty strings when a file is
/// missing).
pub fn resolve(
    spec: &str,
    additional: &[String],
    passwd_text: &str,
    group_text: &str,
) -> Result<Identity> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd(passwd_text).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd(passwd_text)
                .find(|e| e.name == user)
                .ok_or_else(|| Error::NoUser(user.to_string()))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        // Numeric and not in passwd: allowed, as in container runtimes.
        None => user.parse().unwrap_or(0),
    };
    let gid = match grp {
        Some(g) if !g.is_empty() => group_id(g, group_text)?,
        _ => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for g in group(group_text) {
            if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    for a in additional {
        let g = group_id(a, group_text)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry.map_or("/", |e| e.home).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        \n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        broken:x:notanumber:1::/:\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:app,other\n\
        app:x:1000:\n\
        audio:x:29:daemon\n";

    fn ids(spec: &str) -> Result<Identity> {
        resolve(spec, &[], PASSWD, GROUP)
    }

    #[test]
    fn root_by_default() {
        let i = ids("").unwrap();
        assert_eq!((i.uid, i.gid, i.home.as_str()), (0, 0, "/root"));
        assert_eq!(i.groups, [0]);
    }

    #[test]
    fn by_name_with_memberships() {
        let i = ids("app").unwrap();
        assert_eq!((i.uid, i.gid, i.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(i.groups, [1000, 10]);
    }

    #[test]
    fn by_uid_and_explicit_group() {
        let i = ids("1:audio").unwrap();
        assert_eq!((i.uid, i.gid), (1, 29));
        assert_eq!(i.groups, [29]);
        let i = ids("4242:77").unwrap();
        assert_eq!((i.uid, i.gid, i.home.as_str()), (4242, 77, "/"));
        let i = ids("app:").unwrap();
        assert_eq!(i.gid, 1000);
    }

    #[test]
    fn additional_groups_by_name_or_number() {
        let i = resolve("daemon", &["wheel".into(), "500".into()], PASSWD, GROUP).unwrap();
        assert_eq!(i.groups, [1, 29, 10, 500]);
        assert_eq!(
            resolve("daemon", &["nope".into()], PASSWD, GROUP),
            Err(Error::NoGroup("nope".into()))
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(ids("nobody"), Err(Error::NoUser("nobody".into())));
        assert_eq!(ids("broken"), Err(Error::NoUser("broken".into())));
        assert_eq!(ids("app:nogroup"), Err(Error::NoGroup("nogroup".into())));
        assert_eq!(
            resolve("app", &[], "", ""),
            Err(Error::NoUser("app".into()))
        );
        // Numeric ids need no files.
        assert_eq!(resolve("7:8", &[], "", "").unwrap().groups, [8]);
    }
}
