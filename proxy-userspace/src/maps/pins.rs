//! Where things are pinned: `<bpf-root>/v<LAYOUT_VERSION>/{maps,links}/`. The version in the
//! path means an agent with another layout never opens these maps.
use std::path::{Path, PathBuf};

use proxy_common::LAYOUT_VERSION;

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(bpf_root: impl Into<PathBuf>) -> Self {
        Self {
            root: bpf_root.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.versioned().join("links")
    }
}
