//! Records of containers the runtime has not announced yet wait here for their names.
//!
//! A runtime does IO for a container before it tells anyone the container exists:
//! containerd's CRI plugin creates `…/containers/<id>/` and commits the container to its
//! metadata store (an fsync, slow in the very disk storm iostall is for) before it
//! publishes `/containers/create`. Such a record knows the container id, from its path or
//! cgroup, but not the pod: exported at once it would sit under no pod's Resource and in
//! no pod's trace. The sink thread parks it here until the metadata cache knows the id,
//! for at most `hold`; then it goes out with whatever is known by then.
//!
//! Records released from here reach the sinks after later ones: the table and JSON lines
//! are then not in time order (each carries its own time).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Records parked per container id until the id is known, or for at most `hold`.
#[derive(Debug)]
pub struct AwaitingNames<T> {
    hold: Duration,
    capacity: usize,
    /// Per container: when its first record was parked, and its records in order.
    by_container: HashMap<String, (Instant, Vec<T>)>,
    len: usize,
}

impl<T> AwaitingNames<T> {
    /// Parks records for at most `hold`, at most `capacity` at a time.
    #[must_use]
    pub fn new(hold: Duration, capacity: usize) -> Self {
        Self {
            hold,
            capacity,
            by_container: HashMap::new(),
            len: 0,
        }
    }

    /// Parks `item` until `container_id` is known; gives it back when full (it is then
    /// better sent nameless than late or lost).
    pub fn park(&mut self, container_id: String, item: T, now: Instant) -> Result<(), T> {
        if self.len >= self.capacity {
            return Err(item);
        }
        self.by_container
            .entry(container_id)
            .or_insert_with(|| (now, Vec::new()))
            .1
            .push(item);
        self.len += 1;
        Ok(())
    }

    /// Takes, in the order parked, the records of every container `known` now says is
    /// known, and of every container whose first record has waited `hold`.
    pub fn release(&mut self, now: Instant, known: impl Fn(&str) -> bool) -> Vec<T> {
        let hold = self.hold;
        let ready: Vec<String> = self
            .by_container
            .iter()
            .filter(|(id, (since, _))| known(id) || now.duration_since(*since) >= hold)
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ready {
            if let Some((_, items)) = self.by_container.remove(&id) {
                out.extend(items);
            }
        }
        self.len -= out.len();
        out
    }

    /// Takes everything (at shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        self.by_container
            .drain()
            .flat_map(|(_, (_, items))| items)
            .collect()
    }

    /// Records parked now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is parked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_wait_until_their_container_is_known_or_the_hold_ends() {
        let t0 = Instant::now();
        let mut awaiting = AwaitingNames::new(Duration::from_secs(10), 3);
        assert_eq!(awaiting.park("a".into(), 1, t0), Ok(()));
        assert_eq!(
            awaiting.park("b".into(), 2, t0 + Duration::from_secs(5)),
            Ok(())
        );
        assert_eq!(
            awaiting.park("a".into(), 3, t0 + Duration::from_secs(6)),
            Ok(())
        );
        assert_eq!(
            awaiting.park("c".into(), 4, t0),
            Err(4),
            "full: handed back, not lost"
        );
        assert_eq!(awaiting.len(), 3);

        assert!(
            awaiting
                .release(t0 + Duration::from_secs(1), |_| false)
                .is_empty()
        );
        assert_eq!(
            awaiting.release(t0 + Duration::from_secs(1), |id| id == "a"),
            [1, 3],
            "a known container's records, in order"
        );
        assert_eq!(awaiting.len(), 1);
        assert!(
            awaiting
                .release(t0 + Duration::from_secs(14), |_| false)
                .is_empty()
        );
        assert_eq!(
            awaiting.release(t0 + Duration::from_secs(15), |_| false),
            [2],
            "the hold ends {:?} after the first record of its container",
            Duration::from_secs(10)
        );
        assert!(awaiting.is_empty());

        assert_eq!(awaiting.park("d".into(), 5, t0), Ok(()));
        assert_eq!(awaiting.park("e".into(), 6, t0), Ok(()));
        let mut left = awaiting.drain();
        left.sort_unstable();
        assert_eq!(left, [5, 6]);
        assert!(awaiting.is_empty());
    }
}
