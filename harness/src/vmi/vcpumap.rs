//! A small map from vCPU numbers to values, ordered by vCPU: the subset of
//! `BTreeMap`'s interface the engine uses for its stopped vCPUs, on a
//! vector. A `BTreeMap` allocates an 11-entry node on its first insert and
//! frees it when it empties: with ~750-byte values that is an 8 KiB
//! allocation and free for every event of a fuzzing run. A vector holding
//! the one stopped vCPU of a fuzzed guest is allocated once ([`VcpuMap::drain`]
//! keeps it).

/// vCPU number -> value, in vCPU order.
#[derive(Debug)]
pub(crate) struct VcpuMap<T> {
    entries: Vec<(u32, T)>,
}

impl<T> Default for VcpuMap<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> VcpuMap<T> {
    fn find(&self, vcpu: u32) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&vcpu, |(k, _)| *k)
    }

    pub fn get(&self, vcpu: &u32) -> Option<&T> {
        self.find(*vcpu).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, vcpu: &u32) -> Option<&mut T> {
        self.find(*vcpu).ok().map(|i| &mut self.entries[i].1)
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, vcpu: u32, value: T) -> Option<T> {
        match self.find(vcpu) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (vcpu, value));
                None
            }
        }
    }

    pub fn remove(&mut self, vcpu: &u32) -> Option<T> {
        self.find(*vcpu).ok().map(|i| self.entries.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Removes every entry, in vCPU order; the map keeps its allocation.
    pub fn drain(&mut self) -> impl Iterator<Item = (u32, T)> + '_ {
        self.entries.drain(..)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &T)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut T)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

impl<T> IntoIterator for VcpuMap<T> {
    type Item = (u32, T);
    type IntoIter = std::vec::IntoIter<(u32, T)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
impl<T> VcpuMap<T> {
    fn new() -> Self {
        Self::default()
    }

    fn contains_key(&self, vcpu: &u32) -> bool {
        self.find(*vcpu).is_ok()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut m = VcpuMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert(3, "c"), None);
        assert_eq!(m.insert(1, "a"), None);
        assert_eq!(m.insert(2, "b"), None);
        assert_eq!(m.insert(1, "A"), Some("a"));
        assert_eq!(m.len(), 3);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(m.get(&1), Some(&"A"));
        assert!(m.contains_key(&2) && !m.contains_key(&4));
        if let Some(v) = m.get_mut(&2) {
            *v = "B";
        }
        for (&k, v) in m.iter_mut() {
            if k == 3 {
                *v = "C";
            }
        }
        assert_eq!(m.values().copied().collect::<Vec<_>>(), ["A", "B", "C"]);
        assert_eq!(m.remove(&2), Some("B"));
        assert_eq!(m.remove(&2), None);
        assert_eq!(
            m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            [(1, "A"), (3, "C")]
        );
        let taken = std::mem::take(&mut m);
        assert!(m.is_empty());
        assert_eq!(taken.into_iter().collect::<Vec<_>>(), [(1, "A"), (3, "C")]);
        m.insert(0, "z");
        m.clear();
        assert_eq!(m.len(), 0);
        m.insert(5, "e");
        m.insert(4, "d");
        assert_eq!(m.drain().collect::<Vec<_>>(), [(4, "d"), (5, "e")]);
        assert!(m.is_empty());
    }
}
