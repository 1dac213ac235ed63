//! Connection threads: each accepted connection is served, from TLS handshake to its last
//! response, by one of a few threads that each run a single-threaded tokio runtime.
//!
//! Why not the multi-threaded runtime for everything: a keep-alive poll costs about 20 µs
//! of CPU, and with tasks free to move between workers a good share of that went to
//! cross-thread wake-ups (futex wait/wake, scheduler switches) rather than to the request.
//! Pinning each connection to one thread with its own epoll, as nginx pins connections to
//! worker processes, removes that traffic; the accept loop, background jobs and blocking
//! store work stay on the main runtime and its blocking pool.
//!
//! A connection is handed over as a std socket and registered with the target thread's
//! reactor there, so its readiness events never go through another thread.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

/// A fixed set of single-threaded runtimes on their own threads.
pub struct ConnThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ConnThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnThreads")
            .field("threads", &self.handles.len())
            .finish_non_exhaustive()
    }
}

/// The number of threads for a configured value: 0 means one per CPU.
pub fn thread_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl ConnThreads {
    /// Starts `n` threads (at least one), named `ota-conn-<i>`.
    pub fn start(n: usize) -> io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ota-conn-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    // Dropping the runtime cancels the connections still open (past the
                    // shutdown grace) and waits for their blocking store work.
                    drop(runtime);
                })?;
            threads.push(thread);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        })
    }

    /// How many threads serve connections.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one thread.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next thread, round robin. The task's body runs only there (a
    /// current-thread runtime never moves its tasks), so a socket registered inside it
    /// (`TcpStream::from_std`) uses that thread's reactor.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(task));
    }

    /// Stops every thread and waits for them (blocking: call from a blocking context).
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    #[test]
    fn tasks_run_round_robin_each_on_one_named_thread() {
        let threads = ConnThreads::start(2).unwrap();
        assert_eq!(threads.len(), 2);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let seen = Arc::clone(&seen);
            let done = done_tx.clone();
            threads.spawn(async move {
                let before = std::thread::current().name().map(str::to_owned);
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let after = std::thread::current().name().map(str::to_owned);
                seen.lock().unwrap().push((before, after));
                done.send(()).unwrap();
            });
        }
        for _ in 0..4 {
            done_rx.recv().unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        // A task never changes thread, and both threads got work.
        assert!(seen.iter().all(|(b, a)| b == a), "{seen:?}");
        let names: BTreeSet<_> = seen.iter().filter_map(|(b, _)| b.clone()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["ota-conn-0".to_owned(), "ota-conn-1".to_owned()])
        );
        threads.shutdown();
    }

    #[test]
    fn shutdown_cancels_tasks_still_running() {
        let threads = ConnThreads::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        threads.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        threads.shutdown();
        // The task was dropped with its runtime: the sender is gone.
        assert!(rx.recv().is_err());
    }

    #[test]
    fn zero_means_one_per_cpu() {
        assert!(thread_count(0) >= 1);
        assert_eq!(thread_count(3), 3);
    }
}
