//! A FUSE client for tests: encodes requests as the Linux driver does and
//! decodes the replies.

use super::filesystem::FileSystem;
use super::fuse::{self, encode, opcode, InHeader, Reader, Wire};
use super::server::{Server, ServerOptions};

pub type Reply = Result<Vec<u8>, i32>;

pub struct Client<F: ?Sized> {
    pub server: Server<F>,
    unique: u64,
    pub uid: u32,
    pub gid: u32,
}

pub fn request(op: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = encode(&InHeader {
        len: (InHeader::SIZE + body.len()) as u32,
        opcode: op,
        unique,
        nodeid,
        ..Default::default()
    });
    v.extend_from_slice(body);
    v
}

pub fn init_request(unique: u64) -> Vec<u8> {
    let body = encode(&fuse::InitIn {
        major: 7,
        minor: 36,
        max_readahead: 1 << 17,
        flags: u32::MAX,
    });
    request(opcode::INIT, unique, 0, &body)
}

fn name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

pub fn parse<T: Wire>(body: &[u8]) -> T {
    Reader::new(body).read().expect("reply structure")
}

impl<F: FileSystem + ?Sized> Client<F> {
    /// A client whose session has done INIT.
    pub fn new(fs: Box<F>) -> Self {
        let mut c = Self {
            server: Server::new(fs, ServerOptions::default()),
            unique: 0,
            uid: 0,
            gid: 0,
        };
        c.call(opcode::INIT, 0, &init_request(0)[InHeader::SIZE..])
            .expect("INIT succeeds");
        c
    }

    pub fn call(&mut self, op: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let mut req = request(op, self.unique, nodeid, body);
        req[24..28].copy_from_slice(&self.uid.to_le_bytes());
        req[28..32].copy_from_slice(&self.gid.to_le_bytes());
        let reply = self.server.handle(&req).expect("a reply");
        let mut r = Reader::new(&reply);
        let h: fuse::OutHeader = r.read().expect("reply header");
        assert_eq!(h.unique, self.unique);
        assert_eq!(h.len as usize, reply.len());
        if h.error != 0 {
            assert_eq!(reply.len(), fuse::OutHeader::SIZE);
            return Err(-h.error);
        }
        Ok(r.rest().to_vec())
    }

    fn entry(&mut self, op: u32, nodeid: u64, body: &[u8]) -> Result<fuse::EntryOut, i32> {
        self.call(op, nodeid, body).map(|b| parse(&b))
    }

    pub fn lookup(&mut self, parent: u64, n: &str) -> Result<fuse::EntryOut, i32> {
        self.entry(opcode::LOOKUP, parent, &name(n))
    }

    pub fn forget(&mut self, nodeid: u64, n: u64) {
        self.unique += 1;
        let req = request(
            opcode::FORGET,
            self.unique,
            nodeid,
            &encode(&fuse::ForgetIn { nlookup: n }),
        );
        assert!(self.server.handle(&req).is_none());
    }

    pub fn getattr(&mut self, nodeid: u64) -> Result<fuse::Attr, i32> {
        let b = self.call(opcode::GETATTR, nodeid, &[0u8; 16])?;
        Ok(parse::<fuse::AttrOut>(&b).attr)
    }

    pub fn setattr(&mut self, nodeid: u64, s: fuse::SetattrIn) -> Result<fuse::Attr, i32> {
        let b = self.call(opcode::SETATTR, nodeid, &encode(&s))?;
        Ok(parse::<fuse::AttrOut>(&b).attr)
    }

    pub fn mkdir(&mut self, parent: u64, n: &str, mode: u32) -> Result<fuse::EntryOut, i32> {
        let mut b = encode(&fuse::MkdirIn { mode, umask: 0 });
        b.extend(name(n));
        self.entry(opcode::MKDIR, parent, &b)
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        n: &str,
        mode: u32,
        rdev: u32,
    ) -> Result<fuse::EntryOut, i32> {
        let mut b = encode(&fuse::MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        });
        b.extend(name(n));
        self.entry(opcode::MKNOD, parent, &b)
    }

    pub fn symlink(&mut self, parent: u64, n: &str, target: &str) -> Result<fuse::EntryOut, i32> {
        let mut b = name(n);
        b.extend(name(target));
        self.entry(opcode::SYMLINK, parent, &b)
    }

    pub fn create(
        &mut self,
        parent: u64,
        n: &str,
        mode: u32,
        flags: i32,
    ) -> Result<(fuse::EntryOut, u64), i32> {
        let mut b = encode(&fuse::CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            open_flags: 0,
        });
        b.extend(name(n));
        let r = self.call(opcode::CREATE, parent, &b)?;
        let mut rd = Reader::new(&r);
        let e: fuse::EntryOut = rd.read().unwrap();
        let o: fuse::OpenOut = rd.read().unwrap();
        Ok((e, o.fh))
    }

    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let b = encode(&fuse::OpenIn {
            flags: flags as u32,
            open_flags: 0,
        });
        let r = self.call(opcode::OPEN, nodeid, &b)?;
        Ok(parse::<fuse::OpenOut>(&r).fh)
    }

    pub fn opendir(&mut self, nodeid: u64) -> Result<u64, i32> {
        let r = self.call(opcode::OPENDIR, nodeid, &[0u8; 8])?;
        Ok(parse::<fuse::OpenOut>(&r).fh)
    }

    pub fn release(&mut self, nodeid: u64, fh: u64, dir: bool) -> Result<(), i32> {
        let op = if dir {
            opcode::RELEASEDIR
        } else {
            opcode::RELEASE
        };
        let b = encode(&fuse::ReleaseIn {
            fh,
            ..Default::default()
        });
        self.call(op, nodeid, &b).map(drop)
    }

    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Reply {
        let b = encode(&fuse::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        });
        self.call(opcode::READ, nodeid, &b)
    }

    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let mut b = encode(&fuse::WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        });
        b.extend_from_slice(data);
        let r = self.call(opcode::WRITE, nodeid, &b)?;
        Ok(parse::<fuse::WriteOut>(&r).size)
    }

    /// Names (and node ids, for readdirplus) of a whole directory.
    pub fn readdir(&mut self, nodeid: u64, plus: bool) -> Result<Vec<(String, u64)>, i32> {
        let fh = self.opendir(nodeid)?;
        let op = if plus {
            opcode::READDIRPLUS
        } else {
            opcode::READDIR
        };
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let b = encode(&fuse::ReadIn {
                fh,
                offset,
                size: 4096,
                ..Default::default()
            });
            let r = self.call(op, nodeid, &b)?;
            if r.is_empty() {
                break;
            }
            let mut rd = Reader::new(&r);
            while rd.remaining() > 0 {
                let node = if plus {
                    rd.read::<fuse::EntryOut>().unwrap().nodeid
                } else {
                    0
                };
                let d: fuse::Dirent = rd.read().unwrap();
                let n = rd.take(d.namelen as usize, "name").unwrap();
                out.push((String::from_utf8_lossy(n).into_owned(), node));
                let pad = fuse::dirent_size(d.namelen as usize, plus)
                    - d.namelen as usize
                    - fuse::Dirent::SIZE
                    - if plus { fuse::EntryOut::SIZE } else { 0 };
                rd.skip(pad, "padding").unwrap();
                offset = d.off;
            }
        }
        self.release(nodeid, fh, true)?;
        Ok(out)
    }

    pub fn unlink(&mut self, parent: u64, n: &str) -> Result<(), i32> {
        self.call(opcode::UNLINK, parent, &name(n)).map(drop)
    }

    pub fn rmdir(&mut self, parent: u64, n: &str) -> Result<(), i32> {
        self.call(opcode::RMDIR, parent, &name(n)).map(drop)
    }

    pub fn rename(
        &mut self,
        olddir: u64,
        old: &str,
        newdir: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), i32> {
        let mut b = encode(&fuse::Rename2In {
            newdir,
            flags,
            padding: 0,
        });
        b.extend(name(old));
        b.extend(name(new));
        self.call(opcode::RENAME2, olddir, &b).map(drop)
    }

    pub fn link(&mut self, nodeid: u64, newparent: u64, n: &str) -> Result<fuse::EntryOut, i32> {
        let mut b = encode(&fuse::LinkIn { oldnodeid: nodeid });
        b.extend(name(n));
        self.entry(opcode::LINK, newparent, &b)
    }

    pub fn readlink(&mut self, nodeid: u64) -> Reply {
        self.call(opcode::READLINK, nodeid, &[])
    }

    pub fn setxattr(&mut self, nodeid: u64, n: &str, value: &[u8]) -> Result<(), i32> {
        let mut b = encode(&fuse::SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        });
        b.extend(name(n));
        b.extend_from_slice(value);
        self.call(opcode::SETXATTR, nodeid, &b).map(drop)
    }

    pub fn getxattr(&mut self, nodeid: u64, n: &str, size: u32) -> Reply {
        let mut b = encode(&fuse::GetxattrIn { size, padding: 0 });
        b.extend(name(n));
        self.call(opcode::GETXATTR, nodeid, &b)
    }

    pub fn listxattr(&mut self, nodeid: u64, size: u32) -> Reply {
        let b = encode(&fuse::GetxattrIn { size, padding: 0 });
        self.call(opcode::LISTXATTR, nodeid, &b)
    }

    pub fn removexattr(&mut self, nodeid: u64, n: &str) -> Result<(), i32> {
        self.call(opcode::REMOVEXATTR, nodeid, &name(n)).map(drop)
    }
}
