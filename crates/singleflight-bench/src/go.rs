//! Runs the Go program under `go/xsync` (Go's `x/sync/singleflight`) for one
//! repetition of a scenario and reads its samples.

use std::path::PathBuf;
use std::process::Command;

/// The built Go program.
#[derive(Debug, Clone)]
pub struct GoPeer {
    /// Path of the `xsync` binary.
    pub binary: PathBuf,
}

impl GoPeer {
    /// Runs `xsync ARGS` and parses its one line of samples (nanoseconds).
    ///
    /// # Errors
    ///
    /// When the program cannot start, fails, or prints something else.
    pub fn run(&self, args: &[String]) -> Result<Vec<f64>, String> {
        let out = Command::new(&self.binary)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} {args:?} failed: {}",
                self.binary.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|s| {
                s.parse::<f64>()
                    .map_err(|e| format!("bad sample {s:?} from Go: {e}"))
            })
            .collect()
    }
}
