//! One socket's queue of outgoing frames: bounded, fed by several senders (the registry's entry
//! for the socket, the session's own echoes and errors), drained by one receiver (the session's
//! writer). Sending never waits: a full queue is the caller's answer (a slow consumer), a queue
//! whose receiver is gone says so. How the frames get to the wire is the session's business.
//!
//! What `tokio::sync::mpsc::channel` would do here, in less memory: every socket holds one of
//! these for its whole life, and tokio's bounded channel costs about 800 bytes each before the
//! first frame (a cache-padded channel and a first block of 32 slots). This one is a single
//! small allocation; its buffer exists only while frames wait, and goes when the queue empties
//! after a burst, so an idle socket keeps none.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A queue holding at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        capacity,
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            senders: 1,
            receiver_gone: false,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// Puts items on the queue; cheap to clone.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// Takes items off the queue, in the order they were put on.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    capacity: usize,
    // A std Mutex: every critical section is a push or a pop, never an `.await`.
    state: Mutex<State<T>>,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiver waiting for an item.
    waker: Option<Waker>,
    senders: usize,
    receiver_gone: bool,
}

/// Why an item was not queued; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items already.
    Full(T),
    /// The receiver is gone: nobody will take it.
    Closed(T),
}

/// Why nothing was taken off the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Empty, and every sender is gone.
    Disconnected,
}

/// A buffer kept across an empty queue at most this large (in items); past it, a queue that
/// empties gives its buffer back.
const KEPT_WHEN_EMPTY: usize = 8;

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics under this lock (pushes and pops); the queue stays whole if it did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> State<T> {
    fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        if self.items.is_empty() && self.items.capacity() > KEPT_WHEN_EMPTY {
            self.items = VecDeque::new();
        }
        Some(item)
    }
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or its receiver gone; never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(TrySendError::Closed(item));
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        state.items.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Room left: how many more items the queue takes now.
    pub fn capacity(&self) -> usize {
        let len = self.shared.lock().items.len();
        self.shared.capacity.saturating_sub(len)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        // The last sender gone: a waiting receiver learns that nothing more will come.
        let waker = (state.senders == 0).then(|| state.waker.take()).flatten();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; None once the queue is empty and every sender is gone. Cancel safe: an
    /// item is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some(item) = state.pop() {
            return Poll::Ready(Some(item));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next item if there is one now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match state.pop() {
            Some(item) => Ok(item),
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        // What waits is never sent: free it now, not when the last sender goes.
        let items = std::mem::take(&mut state.items);
        drop(state);
        drop(items);
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn items_come_out_in_order_and_a_full_queue_refuses_more() {
        let (tx, mut rx) = channel(3);
        let other = tx.clone();
        for i in 0..3 {
            let sender = if i % 2 == 0 { &tx } else { &other };
            sender.try_send(i).unwrap();
        }
        assert_eq!(tx.capacity(), 0);
        assert_eq!(other.try_send(9), Err(TrySendError::Full(9)));
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(tx.capacity(), 1);
        tx.try_send(3).unwrap();
        assert_eq!(
            std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_queue_without_its_receiver_is_closed_and_keeps_nothing() {
        let (tx, rx) = channel(4);
        let item = Arc::new(());
        tx.try_send(item.clone()).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "the queued item was freed");
        assert!(matches!(tx.try_send(item), Err(TrySendError::Closed(_))));
    }

    #[test]
    fn a_queue_that_empties_after_a_burst_gives_its_buffer_back() {
        let (tx, mut rx) = channel(256);
        for i in 0..200 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_an_item_and_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = channel(2);
        let other = tx.clone();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send("hello").unwrap();
        drop(tx);
        drop(other);
        let (first, second) = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first, second), (Some("hello"), None));
    }

    #[tokio::test]
    async fn a_recv_cancelled_while_waiting_loses_nothing() {
        let (tx, mut rx) = channel(2);
        let timed_out = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(timed_out.is_err());
        tx.try_send(1).unwrap();
        assert_eq!(rx.recv().await, Some(1));
    }
}
