//! A hook for tests of races between writers: it holds a process at a named point (between
//! a writer's check of the store and its commit) while the test lets another writer commit.
//!
//! With `PALPIPE_TEST_PAUSE=POINT` and `PALPIPE_TEST_RESUME=FILE` in the environment, a
//! process that reaches [`pause`]`(POINT)` prints `test pause at POINT` on stderr and waits
//! until FILE exists (at most five minutes, then it goes on). Without both variables, or at
//! any other point, [`pause`] returns at once. Users have no reason to set them.

use std::time::{Duration, Instant};

/// The variable naming the point to pause at.
const POINT_VAR: &str = "PALPIPE_TEST_PAUSE";
/// The variable naming the file whose existence ends the pause.
const RESUME_VAR: &str = "PALPIPE_TEST_RESUME";

/// Pauses at `point` when the environment asks for it (see the module documentation).
pub async fn pause(point: &str) {
    if std::env::var(POINT_VAR).as_deref() != Ok(point) {
        return;
    }
    let Some(resume) = std::env::var_os(RESUME_VAR).filter(|v| !v.is_empty()) else {
        return;
    };
    eprintln!("test pause at {point}");
    let start = Instant::now();
    let resume = std::path::PathBuf::from(resume);
    while !resume.exists() && start.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
