//! A disk that fills up: the tests of what a full disk does to the store, the backfill and the
//! binary mount a small tmpfs (which needs root; a test that cannot, fails saying so).

use std::path::PathBuf;

/// A small disk for tests of a full one: a tmpfs of `size` mounted on a new directory,
/// unmounted when dropped.
pub struct SmallDisk {
    _dir: tempfile::TempDir,
    /// Where it is mounted.
    pub mount: PathBuf,
}

impl SmallDisk {
    /// Mounts it (as root: a test that cannot fails, saying so).
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output();
        match out {
            Ok(out) if out.status.success() => Self { _dir: dir, mount },
            Ok(out) => panic!(
                "this test needs root (CAP_SYS_ADMIN) to mount a {size} tmpfs as a disk that fills up: \
                 `mount -t tmpfs` said {:?}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("this test needs root and `mount` to mount a {size} tmpfs: {e}"),
        }
    }

    /// Makes it `size`.
    pub fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.mount)
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs at {size}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}
