//! Graceful shutdown: a cloneable [`Shutdown`] token that every component's `run` takes, and
//! [`signal`] which resolves on SIGTERM or Ctrl-C.
//!
//! A token rather than a bare future so that `ferry up` can hand the same shutdown to every component it
//! composes, and each component can hand it on to its listeners and connections.

use tokio::sync::watch;

/// Fires the shutdown. Dropping it also counts as a shutdown, so a component never outlives its owner.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// Resolves when the shutdown has been triggered.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new trigger and its token.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A token that never fires (for tests and tools that end by other means).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the process so the receiver never sees it dropped.
        std::mem::forget(tx);
        Self { rx }
    }

    /// Waits for the shutdown (or for the trigger to be dropped).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// A token that fires on SIGTERM or Ctrl-C.
pub fn on_signal() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown requested");
        trigger.trigger();
        // Keep the trigger alive: dropping it is a shutdown too, which is what we want anyway.
    });
    shutdown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let (trigger, shutdown) = channel();
        let a = tokio::spawn(shutdown.clone().wait());
        let b = tokio::spawn(shutdown.clone().wait());
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        a.await.expect("task");
        b.await.expect("task");
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let (trigger, shutdown) = channel();
        drop(trigger);
        tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.wait())
            .await
            .expect("dropping the trigger must release waiters");
    }
}
