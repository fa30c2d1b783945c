//! A real browser for the pages sluice serves: Debian's `chromium`, headless, with a profile of
//! its own and its background traffic off (it talks only to the page's 127.0.0.1 server).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Headless Chromium with a temporary profile.
pub struct Chromium {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

/// What the browser made of a page: its DOM after the scripts ran, and what it logged
/// (console messages among them).
pub struct Rendered {
    /// The DOM, serialized.
    pub dom: String,
    /// The browser's log.
    pub log: String,
}

impl Rendered {
    /// The console's errors: uncaught exceptions and `console.error` lines.
    pub fn script_errors(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| {
                l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error") || l.contains(":ERROR:"))
            })
            .collect()
    }
}

impl Chromium {
    /// Finds Chromium; panics, saying how to install it, where it is missing.
    pub fn find() -> Self {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "Chromium is missing: install Debian's package with `apt-get install -y chromium` (.ci/run does)"
                )
            });
        Self { binary, profile: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str], limit: Duration) -> Output {
        let mut command = Command::new(&self.binary);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--no-proxy-server",
            "--enable-logging=stderr",
            "--v=0",
        ]);
        command.arg(format!("--user-data-dir={}", self.profile.path().display()));
        command.args(args);
        for var in crate::PROXY_VARS {
            command.env_remove(var);
        }
        let mut child =
            command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Loads `url`, lets its scripts run for `script_ms` of the page's time, and returns the DOM.
    pub fn render(&self, url: &str, script_ms: u64) -> Rendered {
        let budget = format!("--virtual-time-budget={script_ms}");
        let out = self.run(&[&budget, "--dump-dom", url], Duration::from_secs(60));
        Rendered {
            dom: String::from_utf8_lossy(&out.stdout).into_owned(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Saves a PNG of `url` at `width` x `height` after `script_ms` of its scripts to `path`.
    pub fn screenshot(&self, url: &str, path: &Path, (width, height): (u32, u32), script_ms: u64) {
        let (budget, size) = (format!("--virtual-time-budget={script_ms}"), format!("--window-size={width},{height}"));
        let shot = format!("--screenshot={}", path.display());
        let out = self.run(&["--hide-scrollbars", &budget, &size, &shot, url], Duration::from_secs(60));
        assert!(
            path.exists(),
            "no screenshot at {}; chromium said:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
