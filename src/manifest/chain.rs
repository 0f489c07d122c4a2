//! Chain resolution and change detection over sorted extent streams. Pure and streaming: memory
//! stays constant whatever the disk size or chain length.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::extent::{Content, Extent};
use crate::error::{Error, Result};

/// A resolved disk view: extents in order, covering `0..size` without gaps.
pub type View = Box<dyn Iterator<Item = Result<Extent>> + Send>;

/// `top` laid over `base`, cut to `size`: where `top` has an extent it wins, elsewhere `base`
/// shows through (clipped where a top extent covers part of it). A byte covered by neither is a
/// damaged chain and yields an error rather than a guess.
pub struct Overlay<B, T: Iterator> {
    base: B,
    top: std::iter::Peekable<T>,
    size: u64,
    pos: u64,
    cur: Option<Extent>,
    failed: bool,
}

impl<B, T> Overlay<B, T>
where
    B: Iterator<Item = Result<Extent>>,
    T: Iterator<Item = Result<Extent>>,
{
    pub fn new(base: B, top: T, size: u64) -> Self {
        Overlay { base, top: top.peekable(), size, pos: 0, cur: None, failed: false }
    }

    fn step(&mut self) -> Result<Option<Extent>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        // Top extents at or before the position win (those wholly behind it cannot exist in a
        // valid manifest, but skip them rather than loop).
        let next_top = loop {
            match self.top.peek() {
                Some(Err(_)) => return Err(self.top.next().and_then(|r| r.err()).unwrap_or_else(|| gap(self.pos))),
                Some(Ok(t)) if t.end() <= self.pos => {
                    self.top.next();
                }
                Some(Ok(t)) => break Some(*t),
                None => break None,
            }
        };
        if let Some(t) = next_top {
            if t.offset <= self.pos {
                self.top.next();
                let piece = t.slice(self.pos, self.size);
                self.pos = piece.end();
                return Ok(Some(piece));
            }
        }
        let limit = next_top.map_or(self.size, |t| t.offset.min(self.size));
        loop {
            match self.cur {
                Some(c) if c.end() > self.pos => break,
                _ => match self.base.next() {
                    Some(e) => self.cur = Some(e?),
                    None => return Err(gap(self.pos)),
                },
            }
        }
        let c = self.cur.ok_or_else(|| gap(self.pos))?;
        if c.offset > self.pos {
            return Err(gap(self.pos));
        }
        let piece = c.slice(self.pos, limit);
        self.pos = piece.end();
        Ok(Some(piece))
    }
}

fn gap(at: u64) -> Error {
    Error::CorruptManifest { image: "chain".into(), reason: format!("no image in the chain covers offset {at}") }
}

impl<B, T> Iterator for Overlay<B, T>
where
    B: Iterator<Item = Result<Extent>>,
    T: Iterator<Item = Result<Extent>>,
{
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Result<Extent>> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(e) => e.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One view read once by two readers, each at its own pace: what one reads first waits in the
/// other's queue, so memory grows only with how far apart they are (a backup's readers are a
/// window of segments apart). A read error goes to the reader that met it, and a copy of it to
/// the other.
pub fn tee(view: View) -> (View, View) {
    let shared = Arc::new(Mutex::new(Tee { view, queues: [VecDeque::new(), VecDeque::new()] }));
    (Box::new(TeeSide { shared: shared.clone(), side: 0 }), Box::new(TeeSide { shared, side: 1 }))
}

struct Tee {
    view: View,
    queues: [VecDeque<Result<Extent>>; 2],
}

struct TeeSide {
    shared: Arc<Mutex<Tee>>,
    side: usize,
}

impl Iterator for TeeSide {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Result<Extent>> {
        let mut t = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = t.queues[self.side].pop_front() {
            return Some(e);
        }
        let e = t.view.next()?;
        let copy = match &e {
            Ok(x) => Ok(*x),
            Err(err) => Err(err.duplicate()),
        };
        t.queues[1 - self.side].push_back(copy);
        Some(e)
    }
}

/// Decides, for each extent of a new disk view (in order), whether the base view already holds
/// exactly that content at that place. Only changed extents go into a differential or
/// incremental manifest.
pub struct ChangeFilter {
    base: Option<View>,
    cur: Option<Extent>,
}

impl ChangeFilter {
    /// With no base every extent is a change (a full image).
    pub fn new(base: Option<View>) -> Self {
        ChangeFilter { base, cur: None }
    }

    /// Brings `cur` to the first base extent that ends after `pos`.
    fn seek(&mut self, pos: u64) -> Result<Option<Extent>> {
        let Some(base) = self.base.as_mut() else {
            return Ok(None);
        };
        loop {
            match self.cur {
                Some(c) if c.end() > pos => return Ok(Some(c)),
                _ => match base.next() {
                    Some(e) => self.cur = Some(e?),
                    None => {
                        self.cur = None;
                        return Ok(None);
                    }
                },
            }
        }
    }

    /// Bytes of the base's unused extents inside `from .. to`, moving past them: for a segment
    /// whose extents are taken from the base unchanged (its fingerprint matched).
    pub fn unused_between(&mut self, from: u64, to: u64) -> Result<u64> {
        let mut pos = from;
        let mut sum = 0;
        while pos < to {
            let Some(c) = self.seek(pos)? else { break };
            if c.offset >= to {
                break;
            }
            let end = c.end().min(to);
            if c.is_unused() {
                sum += end - c.offset.max(pos);
            }
            pos = end;
        }
        Ok(sum)
    }

    pub fn is_changed(&mut self, e: &Extent) -> Result<bool> {
        let Some(first) = self.seek(e.offset)? else {
            return Ok(true);
        };
        match e.content {
            Content::Chunk { .. } => Ok(first != *e),
            Content::Zero | Content::Unused => {
                // Unchanged when the base has the same content (zeros, or unused) over the whole
                // range, in however many pieces.
                let mut pos = e.offset;
                let mut c = first;
                loop {
                    if c.content != e.content || c.offset > pos {
                        return Ok(true);
                    }
                    pos = c.end();
                    if pos >= e.end() {
                        return Ok(false);
                    }
                    match self.seek(pos)? {
                        Some(next) => c = next,
                        None => return Ok(true),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use crate::manifest::extent::push_coalesced;
    use proptest::prelude::*;

    /// A disk as a byte-level model: each byte is 0 or "byte k of chunk X".
    type Model = Vec<Option<(ChunkId, u64)>>;

    fn model_of(view: &[Extent], size: u64) -> Model {
        let mut m = vec![None; size as usize];
        for e in view {
            for i in 0..e.len {
                m[(e.offset + i) as usize] = match e.content {
                    Content::Zero => None,
                    Content::Unused => Some((ChunkId([0xFF; 32]), u64::MAX)),
                    Content::Chunk { id, skip } => Some((id, skip as u64 + i)),
                };
            }
        }
        m
    }

    /// Random partition of `0..size` into zero and chunk extents, ids from a small alphabet.
    fn partition(size: u64, cuts: &[u64], kinds: &[u8]) -> Vec<Extent> {
        let mut points: Vec<u64> = cuts.iter().map(|c| c % size.max(1)).filter(|&c| c > 0).collect();
        points.push(0);
        points.push(size);
        points.sort();
        points.dedup();
        let mut out = Vec::new();
        for (i, w) in points.windows(2).enumerate() {
            let k = kinds.get(i).copied().unwrap_or(0) % 5;
            let e = if k == 0 {
                Extent::zero(w[0], w[1] - w[0])
            } else if k == 4 {
                Extent::unused(w[0], w[1] - w[0])
            } else {
                Extent::chunk(w[0], w[1] - w[0], ChunkId([k; 32]))
            };
            push_coalesced(&mut out, e);
        }
        out
    }

    fn ok(v: Vec<Extent>) -> impl Iterator<Item = Result<Extent>> {
        v.into_iter().map(Ok)
    }

    #[test]
    fn both_sides_of_a_tee_read_the_whole_view_once_each() {
        let v: Vec<Extent> = (0..10).map(|i| Extent::zero(i * 10, 10)).collect();
        let (mut a, mut b) = tee(Box::new(ok(v.clone()).chain([Err(Error::MissingManifest { image: "x".into() })])));
        let mut seen_a: Vec<Extent> = a.by_ref().take(7).map(|e| e.unwrap()).collect();
        let seen_b: Vec<Extent> = b.by_ref().take(10).map(|e| e.unwrap()).collect();
        seen_a.extend(a.by_ref().take(3).map(|e| e.unwrap()));
        assert_eq!(seen_a, v);
        assert_eq!(seen_b, v);
        for side in [&mut a, &mut b] {
            assert!(matches!(side.next(), Some(Err(Error::MissingManifest { .. }))), "the error reaches both");
            assert!(side.next().is_none());
        }
    }

    proptest! {
        /// Overlay equals the byte model: top bytes where the top has extents, base elsewhere.
        #[test]
        fn overlay_matches_the_byte_model(
            base_size in 1u64..300, size in 1u64..300,
            base_cuts in proptest::collection::vec(any::<u64>(), 0..12),
            top_cuts in proptest::collection::vec(any::<u64>(), 0..12),
            kinds in proptest::collection::vec(any::<u8>(), 0..30),
            keep in proptest::collection::vec(any::<bool>(), 0..30),
        ) {
            let base = partition(base_size, &base_cuts, &kinds);
            let full_top = partition(size, &top_cuts, &kinds.iter().map(|k| k.wrapping_add(1)).collect::<Vec<_>>());
            // The top keeps a random subset of its extents, plus everything past the base's end.
            let top: Vec<Extent> = full_top.iter().enumerate()
                .filter(|(i, e)| keep.get(*i).copied().unwrap_or(true) || e.end() > base_size)
                .map(|(_, e)| *e).collect();
            let merged: Vec<Extent> = Overlay::new(ok(base.clone()), ok(top.clone()), size).collect::<Result<_>>().unwrap();
            let mut expect = model_of(&base, base_size.max(size));
            expect.truncate(size as usize);
            expect.resize(size as usize, None);
            for e in &top {
                let m = model_of(&[*e], e.end());
                for i in e.offset..e.end().min(size) { expect[i as usize] = m[i as usize]; }
            }
            prop_assert_eq!(model_of(&merged, size), expect);
            let mut pos = 0;
            for e in &merged { prop_assert_eq!(e.offset, pos); pos = e.end(); }
            prop_assert_eq!(pos, size);
        }

        /// Storing only the changed extents of a new view and overlaying them on the base gives
        /// back the new view exactly: the property that makes incrementals restorable.
        #[test]
        fn changes_over_base_reproduce_the_new_view(
            base_size in 1u64..300, size in 1u64..300,
            base_cuts in proptest::collection::vec(any::<u64>(), 0..12),
            new_cuts in proptest::collection::vec(any::<u64>(), 0..12),
            kinds in proptest::collection::vec(any::<u8>(), 0..30),
            new_kinds in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let base = partition(base_size, &base_cuts, &kinds);
            let new = partition(size, &new_cuts, &new_kinds);
            let mut filter = ChangeFilter::new(Some(Box::new(ok(base.clone()))));
            let mut delta = Vec::new();
            for e in &new {
                if filter.is_changed(e).unwrap() { delta.push(*e); }
            }
            let merged: Vec<Extent> = Overlay::new(ok(base), ok(delta), size).collect::<Result<_>>().unwrap();
            prop_assert_eq!(model_of(&merged, size), model_of(&new, size));
        }
    }

    #[test]
    fn unused_bytes_between_two_offsets_of_the_base() {
        let base = vec![
            Extent::zero(0, 10),
            Extent::unused(10, 20),
            Extent::chunk(30, 5, ChunkId([1; 32])),
            Extent::unused(35, 15),
        ];
        let mut f = ChangeFilter::new(Some(Box::new(ok(base))));
        assert_eq!(f.unused_between(0, 15).unwrap(), 5);
        assert_eq!(f.unused_between(15, 40).unwrap(), 15 + 5);
        assert_eq!(f.unused_between(40, 60).unwrap(), 10);
        assert_eq!(ChangeFilter::new(None).unused_between(0, 100).unwrap(), 0);
    }

    #[test]
    fn identical_views_have_no_changes() {
        let v = partition(1000, &[10, 300, 301, 900], &[0, 1, 2, 0, 3]);
        let mut f = ChangeFilter::new(Some(Box::new(ok(v.clone()))));
        assert!(v.iter().all(|e| !f.is_changed(e).unwrap()));
    }

    #[test]
    fn a_gap_in_the_chain_is_an_error() {
        let base = vec![Extent::zero(0, 10)];
        let top = vec![Extent::zero(20, 5)];
        let r: Result<Vec<Extent>> = Overlay::new(ok(base), ok(top), 25).collect();
        assert!(matches!(r, Err(Error::CorruptManifest { .. })));
    }
}
