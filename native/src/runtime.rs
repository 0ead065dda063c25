//! The one tokio runtime the addon uses, and a small task group for "wait until all tasks finished".
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// Two workers: the machine is small, and one worker per direction of a busy tunnel is enough.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The global multi-thread runtime, created on first use.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("portway-worker")
            .enable_all()
            .build()
            .expect("failed to create the tokio runtime")
    })
}

/// Milliseconds since the Unix epoch (for `atMs` and `connectedAt`).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counts spawned tasks so a role can wait until every one of them has finished.
#[derive(Clone, Default)]
pub struct TaskGroup {
    inner: Arc<TaskGroupInner>,
}

#[derive(Default)]
struct TaskGroupInner {
    running: AtomicUsize,
    idle: Notify,
}

struct TaskGuard(Arc<TaskGroupInner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl TaskGroup {
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = TaskGuard(self.inner.clone());
        tokio::spawn(async move {
            let _guard = guard;
            fut.await
        })
    }

    pub fn len(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no task of the group is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Resolves once the flag in `rx` is true (or its sender is gone).
pub async fn until_set(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}
