//! A bounded queue ordered by deadline (earliest first; equal deadlines in arrival order).
//! Pure data structure: the replica worker decides what to do with expired entries.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use tokio::time::Instant;

struct Entry<T> {
    deadline: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline && self.seq == other.seq
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.seq).cmp(&(self.deadline, self.seq))
    }
}

/// Earliest-deadline-first queue holding at most `capacity` items.
pub struct DeadlineQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    capacity: usize,
    next_seq: u64,
}

impl<T> DeadlineQueue<T> {
    /// An empty queue that refuses items beyond `capacity` (at least 1).
    pub fn new(capacity: usize) -> Self {
        DeadlineQueue {
            heap: BinaryHeap::new(),
            capacity: capacity.max(1),
            next_seq: 0,
        }
    }

    /// Adds `item`, or gives it back if the queue is full.
    pub fn push(&mut self, deadline: Instant, item: T) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            return Err(item);
        }
        self.heap.push(Entry {
            deadline,
            seq: self.next_seq,
            item,
        });
        self.next_seq += 1;
        Ok(())
    }

    /// Keeps only the items for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|entry| keep(&entry.item));
    }

    /// The items, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|entry| &entry.item)
    }

    /// Removes the item with the earliest deadline.
    pub fn pop(&mut self) -> Option<(Instant, T)> {
        self.heap.pop().map(|e| (e.deadline, e.item))
    }

    /// Number of items waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The bound given at creation.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_earliest_deadline_first_then_arrival_order() {
        let now = Instant::now();
        let mut q = DeadlineQueue::new(10);
        q.push(now + Duration::from_millis(30), "late").unwrap();
        q.push(now + Duration::from_millis(10), "first").unwrap();
        q.push(now + Duration::from_millis(10), "second").unwrap();
        q.push(now + Duration::from_millis(20), "middle").unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, item)| item)).collect();
        assert_eq!(order, ["first", "second", "middle", "late"]);
    }

    #[test]
    fn refuses_items_beyond_capacity() {
        let now = Instant::now();
        let mut q = DeadlineQueue::new(2);
        assert!(q.push(now, 1).is_ok());
        assert!(q.push(now, 2).is_ok());
        assert_eq!(q.push(now, 3), Err(3));
        assert_eq!(q.len(), 2);
        q.pop();
        assert!(q.push(now, 3).is_ok());
        q.retain(|&item| item != 2);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().map(|(_, item)| item), Some(3));
    }
}
