//! The simulated network: one-way FIFO pipes with latency.
//!
//! A pipe keeps what was written in order, each write stamped with the time
//! it becomes readable. Stamps never decrease, so a pipe is FIFO like one
//! direction of a TCP connection; the reader takes a chunk of any size from
//! what is readable, so writes are split and merged arbitrarily, and a
//! reply may be cut anywhere, headers and CRLFs included.
//!
//! A pipe can also be held (congestion): nothing becomes readable until
//! then, while other pipes go on, so connections are delayed against each
//! other by any amount and never reordered within themselves.

use bytes::{Bytes, BytesMut};
use kv_core::Instant;
use std::collections::VecDeque;

#[derive(Debug)]
pub struct Pipe<T> {
    queue: VecDeque<(Instant, T)>,
    /// Nothing is readable before this (congestion).
    held_until: Instant,
    /// Part of the front item was read: it can no longer move.
    front_started: bool,
    /// Where the item last queued is now (it may have moved ahead), until
    /// anything is read.
    moving: Option<usize>,
}

impl<T> Default for Pipe<T> {
    fn default() -> Self {
        Pipe {
            queue: VecDeque::new(),
            held_until: Instant::ZERO,
            front_started: false,
            moving: None,
        }
    }
}

impl<T> Pipe<T> {
    /// Queues `item`, readable at `at` or when everything before it is,
    /// whichever is later.
    pub fn send(&mut self, at: Instant, item: T) {
        let at = self.queue.back().map_or(at, |(last, _)| at.max(*last));
        self.queue.push_back((at, item));
        self.moving = Some(self.queue.len() - 1);
    }

    /// When the next item becomes readable.
    pub fn next_ready(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| (*at).max(self.held_until))
    }

    pub fn is_ready(&self, now: Instant) -> bool {
        self.next_ready().is_some_and(|at| at <= now)
    }

    /// Makes nothing readable before `until` (or later, if already held
    /// longer).
    pub fn hold(&mut self, until: Instant) {
        self.held_until = self.held_until.max(until);
    }

    /// Ends a hold (the congestion clears).
    pub fn release(&mut self) {
        self.held_until = Instant::ZERO;
    }

    fn open(&self, now: Instant) -> bool {
        self.held_until <= now
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of items on the way, readable or not.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Number of items readable now.
    pub fn ready_count(&self, now: Instant) -> usize {
        if !self.open(now) {
            return 0;
        }
        self.queue.iter().take_while(|(at, _)| *at <= now).count()
    }

    /// Takes the next readable item.
    pub fn recv(&mut self, now: Instant) -> Option<T> {
        if self.is_ready(now) {
            self.front_started = false;
            self.moving = None;
            self.queue.pop_front().map(|(_, item)| item)
        } else {
            None
        }
    }

    /// Moves the item that was last queued one place ahead, past the item
    /// before it, keeping the stamps where they were, if `movable` says so
    /// of that item and no part of it was read yet: only the planted
    /// cache-after-invalidation bug does this. Whether it moved.
    pub fn move_ahead(&mut self, movable: impl Fn(&T) -> bool) -> bool {
        let Some(i) = self.moving.filter(|&i| i > 0) else {
            return false;
        };
        if (i == 1 && self.front_started) || !movable(&self.queue[i - 1].1) {
            return false;
        }
        let (a, b) = (self.queue[i - 1].0, self.queue[i].0);
        self.queue.swap(i - 1, i);
        self.queue[i - 1].0 = a;
        self.queue[i].0 = b;
        self.moving = Some(i - 1);
        true
    }

    /// Swaps the first two queued items, keeping the stamps where they
    /// were: only the planted reordering bug does this.
    pub fn swap_front(&mut self) {
        if self.queue.len() >= 2 {
            let (a, b) = (self.queue[0].0, self.queue[1].0);
            self.queue.swap(0, 1);
            self.queue[0].0 = a;
            self.queue[1].0 = b;
            self.moving = None;
        }
    }
}

impl Pipe<Bytes> {
    /// Bytes readable now.
    pub fn ready_bytes(&self, now: Instant) -> usize {
        if !self.open(now) {
            return 0;
        }
        self.queue
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, b)| b.len())
            .sum()
    }

    /// Takes up to `max` readable bytes, as one chunk.
    pub fn recv_bytes(&mut self, now: Instant, max: usize) -> Bytes {
        let mut out = BytesMut::new();
        if !self.open(now) {
            return out.freeze();
        }
        while out.len() < max {
            let Some((at, front)) = self.queue.front_mut() else {
                break;
            };
            if *at > now {
                break;
            }
            let want = max - out.len();
            if front.len() <= want {
                out.extend_from_slice(front);
                self.queue.pop_front();
                self.front_started = false;
                self.moving = None;
            } else {
                out.extend_from_slice(&front.split_to(want));
                self.front_started = true;
            }
        }
        out.freeze()
    }

    /// Keeps only the first `n` bytes queued: the rest never left the
    /// sender. Used when a connection dies with data in flight.
    pub fn truncate_bytes(&mut self, mut n: usize) {
        self.moving = None;
        let mut kept = VecDeque::new();
        while let Some((at, mut b)) = self.queue.pop_front() {
            if n == 0 {
                break;
            }
            if b.len() > n {
                b.truncate(n);
            }
            n -= b.len();
            kept.push_back((at, b));
        }
        self.queue = kept;
    }

    pub fn total_bytes(&self) -> usize {
        self.queue.iter().map(|(_, b)| b.len()).sum()
    }
}
