//! A socket's alarm: how the registry tells a session that its socket must close, because it
//! fell behind (its queue overflowed) or because messages it missed could not be filled (it
//! must resume from its cursor). The registry raises it, the session's writer waits for it.
//!
//! One small allocation per socket for both reasons, and one waiting future in the writer; a
//! cancellation token per reason took two of each, for every idle socket.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

/// Why a socket's alarm was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The socket's queue overflowed: it is closed with 1013.
    Slow = 1,
    /// Messages its target missed could not be filled: it is closed with 1012.
    Resync = 2,
}

/// Shared by the registry's entry for a socket and the socket's session; a clone is a count.
#[derive(Clone, Debug, Default)]
pub struct Alarm(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// The reasons raised so far, one bit each.
    raised: AtomicU8,
    woken: Notify,
}

impl Alarm {
    /// Raises `reason`; true the first time it is raised (so it is counted once).
    pub fn raise(&self, reason: Reason) -> bool {
        let bit = reason as u8;
        let before = self.0.raised.fetch_or(bit, Ordering::AcqRel);
        let first = before & bit == 0;
        if first {
            self.0.woken.notify_waiters();
        }
        first
    }

    pub fn is_raised(&self, reason: Reason) -> bool {
        self.0.raised.load(Ordering::Acquire) & reason as u8 != 0
    }

    /// Until the socket fell behind.
    pub fn slow(&self) -> impl Future<Output = Reason> + '_ {
        self.wait(Reason::Slow as u8)
    }

    /// Until either reason is raised; a slow consumer when both are.
    pub fn any(&self) -> impl Future<Output = Reason> + '_ {
        self.wait(Reason::Slow as u8 | Reason::Resync as u8)
    }

    // `slow` and `any` hand this future on rather than await it in one of their own: a
    // socket's writer holds it for as long as the socket is idle, and each level of nesting
    // would add to it.
    async fn wait(&self, mask: u8) -> Reason {
        loop {
            // Registered before the bits are read, so a raise in between still wakes it.
            let mut woken = std::pin::pin!(self.0.woken.notified());
            woken.as_mut().enable();
            let raised = self.0.raised.load(Ordering::Acquire) & mask;
            if raised & Reason::Slow as u8 != 0 {
                return Reason::Slow;
            }
            if raised != 0 {
                return Reason::Resync;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settles<F: std::future::Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_raise_wakes_a_waiting_session_and_counts_once() {
        let alarm = Alarm::default();
        let session = alarm.clone();
        let waiting = tokio::spawn(async move { session.any().await });
        tokio::task::yield_now().await;
        assert!(!alarm.is_raised(Reason::Resync));
        assert!(alarm.raise(Reason::Resync));
        assert!(!alarm.raise(Reason::Resync), "raised twice, counted twice");
        assert_eq!(
            settles(waiting).await.map(Result::unwrap),
            Some(Reason::Resync)
        );
        assert!(alarm.is_raised(Reason::Resync));
        assert!(!alarm.is_raised(Reason::Slow));
    }

    #[tokio::test]
    async fn a_raise_before_the_wait_is_not_missed_and_slow_comes_first() {
        let alarm = Alarm::default();
        alarm.raise(Reason::Resync);
        alarm.raise(Reason::Slow);
        assert_eq!(settles(alarm.any()).await, Some(Reason::Slow));
        assert_eq!(settles(alarm.slow()).await, Some(Reason::Slow));
    }

    #[tokio::test]
    async fn waiting_for_slow_ignores_a_resync() {
        let alarm = Alarm::default();
        alarm.raise(Reason::Resync);
        assert_eq!(settles(alarm.slow()).await, None);
        alarm.raise(Reason::Slow);
        assert_eq!(settles(alarm.slow()).await, Some(Reason::Slow));
    }
}
