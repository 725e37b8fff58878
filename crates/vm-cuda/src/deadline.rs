//! Work on a GPU that has to answer in time. A stuck GPU (a kernel that never ends, a
//! driver call that never returns) must not hang the health check and everything waiting
//! on it: a fleet sweep, a VMM's release path. The work runs on a thread of its own; past
//! the deadline the caller gets what the work had got to, and the thread is left behind,
//! since no driver call can be cancelled. Whatever the work holds (its context, the GPU's
//! lock) stays with it, so a stuck GPU stays locked while its check is stuck.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// `d` the way a message says it: whole seconds from one second on, else milliseconds.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

/// What the work has got to: the step it is in (and since when), and its results so far.
#[derive(Debug)]
pub(crate) struct Progress<R> {
    state: Arc<Mutex<State<R>>>,
}

#[derive(Debug)]
struct State<R> {
    step: &'static str,
    since: Instant,
    done: Vec<R>,
}

impl<R> Clone for Progress<R> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<R: Clone> Progress<R> {
    fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                step: "start",
                since: Instant::now(),
                done: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The work enters step `name`.
    pub(crate) fn step(&self, name: &'static str) {
        let mut s = self.lock();
        s.step = name;
        s.since = Instant::now();
    }

    /// The work has a result.
    pub(crate) fn done(&self, r: R) {
        self.lock().done.push(r);
    }
}

/// How the work ended, as far as the caller waited.
#[derive(Debug)]
pub(crate) enum Outcome<T, R> {
    /// It finished in time.
    Finished(T),
    /// It did not.
    Elapsed(Late<R>),
}

/// Work that missed its deadline: the step it was in, how long it had been in it, and its
/// results so far.
#[derive(Debug)]
pub(crate) struct Late<R> {
    pub(crate) step: &'static str,
    pub(crate) in_step: Duration,
    pub(crate) done: Vec<R>,
}

/// Runs `work` on a thread named `name` and waits for it until `deadline`.
pub(crate) fn run_within<T, R>(
    deadline: Duration,
    name: String,
    work: impl FnOnce(&Progress<R>) -> T + Send + 'static,
) -> Result<Outcome<T, R>>
where
    T: Send + 'static,
    R: Clone + Send + 'static,
{
    let progress = Progress::new();
    let theirs = progress.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // The receiver is gone when the caller gave up waiting: nothing to tell.
            let _ = tx.send(work(&theirs));
        })
        .map_err(|e| Error::InvalidArgument {
            operation: "health check",
            reason: format!("starting the check thread: {e}"),
        })?;
    match rx.recv_timeout(deadline) {
        Ok(t) => Ok(Outcome::Finished(t)),
        Err(RecvTimeoutError::Timeout) => {
            let s = progress.lock();
            Ok(Outcome::Elapsed(Late {
                step: s.step,
                in_step: s.since.elapsed(),
                done: s.done.clone(),
            }))
        }
        Err(RecvTimeoutError::Disconnected) => Err(Error::InvalidArgument {
            operation: "health check",
            reason: "the check thread panicked".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_or_milliseconds() {
        assert_eq!(human(Duration::from_secs(60)), "60 s");
        assert_eq!(human(Duration::from_millis(1)), "1 ms");
        assert_eq!(human(Duration::from_millis(1500)), "2 s");
    }

    #[test]
    fn work_in_time_is_finished() {
        let r = run_within(Duration::from_secs(30), "t".into(), |p: &Progress<u32>| {
            p.step("one");
            p.done(1);
            7
        });
        assert!(matches!(r, Ok(Outcome::Finished(7))));
    }

    #[test]
    fn late_work_is_elapsed_with_its_step_and_results() {
        let (release, wait) = mpsc::channel::<()>();
        let r = run_within(Duration::from_millis(50), "t".into(), move |p| {
            p.step("first");
            p.done("first passed");
            p.step("second");
            let _ = wait.recv(); // stuck until the test lets it go
        })
        .expect("run");
        match r {
            Outcome::Elapsed(late) => {
                assert_eq!(late.step, "second");
                assert!(late.in_step >= Duration::from_millis(40), "{late:?}");
                assert_eq!(late.done, ["first passed"]);
            }
            Outcome::Finished(()) => panic!("the work was stuck"),
        }
        drop(release);
    }

    #[test]
    fn a_panic_in_the_work_is_an_error() {
        let r = run_within(Duration::from_secs(30), "t".into(), |_: &Progress<u8>| {
            panic!("boom")
        });
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
    }
}
