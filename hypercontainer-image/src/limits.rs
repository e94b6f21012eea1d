//! Caps applied to untrusted input.

/// Caps on what an image or a layer may make this crate read, allocate or
/// write. Every field has a generous default; lower them for untrusted
/// sources you want to bound more tightly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest JSON document (index, manifest, config, docker manifest.json).
    pub max_json_bytes: u64,
    /// Largest uncompressed layer stream (all tar bytes, headers included).
    pub max_layer_bytes: u64,
    /// Most tar entries in one layer (extension headers included).
    pub max_entries: u64,
    /// Longest entry path or link target, in bytes.
    pub max_path_len: usize,
    /// Deepest entry path, in components.
    pub max_path_depth: usize,
    /// Largest PAX extended header or GNU long name/link record.
    pub max_extension_bytes: u64,
    /// Most nested indexes followed while resolving a reference.
    pub max_index_depth: usize,
    /// Most layers in one image.
    pub max_layers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_bytes: 4 << 20,
            max_layer_bytes: 32 << 30,
            max_entries: 4_000_000,
            max_path_len: 4096,
            max_path_depth: 256,
            max_extension_bytes: 1 << 20,
            max_index_depth: 4,
            max_layers: 256,
        }
    }
}
