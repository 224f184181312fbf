//! Messages for connections other than the one whose command made them:
//! published messages and invalidations. The server does not own the
//! connections, so it leaves each message in its recipient's mailbox and
//! names the recipient in [`Mailboxes::take_woken`]; the driver wakes that
//! connection, whose [`ServerConnection`](super::ServerConnection) moves
//! the mail into its output between replies, in its own encoding.
//!
//! A mailbox is bounded: a recipient that does not read while mail keeps
//! coming is disconnected at its output limit, as Redis disconnects a
//! subscriber at its `client-output-buffer-limit`, and its mail dropped.

use crate::reply::Reply;
use std::collections::{HashMap, VecDeque};

/// One connection's undelivered messages.
#[derive(Debug, Default)]
pub struct Mailbox {
    /// The messages, oldest first.
    pub items: VecDeque<Reply>,
    /// Roughly how many bytes they take encoded.
    pub bytes: usize,
}

/// Every connection's mailbox.
#[derive(Debug, Default)]
pub struct Mailboxes {
    boxes: HashMap<u64, Mailbox>,
    /// Recipients of mail since the driver last asked.
    woken: Vec<u64>,
}

/// What delivering a message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// It waits in the mailbox.
    Queued,
    /// The mailbox went over its limit: it was emptied, and the recipient
    /// is to be disconnected.
    Overflowed,
}

impl Mailboxes {
    /// Leaves `message` for connection `id`, whose mailbox may hold up to
    /// `limit` bytes (0: no limit).
    pub fn post(&mut self, id: u64, message: Reply, limit: usize) -> Posted {
        let size = encoded_size(&message);
        let mailbox = self.boxes.entry(id).or_default();
        if limit > 0 && mailbox.bytes + size > limit {
            self.boxes.remove(&id);
            return Posted::Overflowed;
        }
        if mailbox.items.is_empty() {
            self.woken.push(id);
        }
        mailbox.bytes += size;
        mailbox.items.push_back(message);
        Posted::Queued
    }

    /// The mail waiting for `id`, taken.
    pub fn take(&mut self, id: u64) -> Option<Mailbox> {
        if self.boxes.is_empty() {
            return None;
        }
        self.boxes.remove(&id)
    }

    /// How many bytes wait for `id`.
    pub fn bytes(&self, id: u64) -> usize {
        self.boxes.get(&id).map_or(0, |m| m.bytes)
    }

    /// Forgets a closed connection's mail.
    pub fn remove(&mut self, id: u64) {
        self.boxes.remove(&id);
    }

    /// The connections that got mail since the last call (each once per
    /// empty-to-full change of its mailbox).
    pub fn take_woken(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.woken)
    }

    /// Bytes waiting in all mailboxes.
    pub fn total_bytes(&self) -> usize {
        self.boxes.values().map(|m| m.bytes).sum()
    }
}

/// About the size of `reply` encoded in RESP: the payload and a header per
/// element.
pub fn encoded_size(reply: &Reply) -> usize {
    match reply {
        Reply::Bulk(b) | Reply::Status(b) | Reply::Error(b) => b.len() + 16,
        Reply::Array(items) | Reply::Push(items) | Reply::Set(items) => {
            16 + items.iter().map(encoded_size).sum::<usize>()
        }
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(n: usize) -> Reply {
        Reply::Push(vec![Reply::Bulk(Bytes::from(vec![b'x'; n]))])
    }

    #[test]
    fn wakes_once_per_batch_and_overflows_at_the_limit() {
        let mut m = Mailboxes::default();
        assert_eq!(m.post(7, msg(10), 100), Posted::Queued);
        assert_eq!(m.post(7, msg(10), 100), Posted::Queued);
        assert_eq!(m.take_woken(), vec![7]);
        assert_eq!(m.bytes(7), 2 * encoded_size(&msg(10)));
        assert_eq!(m.post(7, msg(60), 100), Posted::Overflowed);
        assert_eq!(m.bytes(7), 0, "its mail is dropped");
        assert_eq!(m.post(8, msg(1000), 0), Posted::Queued, "0: no limit");
        let taken = m.take(8).unwrap();
        assert_eq!(taken.items.len(), 1);
        assert!(m.take(8).is_none());
    }
}
