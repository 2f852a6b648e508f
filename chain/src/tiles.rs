//! A Merkle log as C2SP tlog tiles (c2sp.org/tlog-tiles): what a log growing from one size
//! to another writes, and the roots and proofs a reader computes from tiles alone.
//!
//! ```text
//!  tile/<L>/<N>[.p/<W>]       level L, tile N: the hashes of level 8L of the tree
//!                             (blocks of 256^L leaves) number N·256 … N·256+W−1, 32 bytes each
//!  tile/entries/<N>[.p/<W>]   leaves N·256 … N·256+W−1 as entries: u16 BE length ‖ bytes
//!  N = 1234067  ─▶  x001/x234/067       (3-digit groups, all but the last prefixed x)
//! ```
//!
//! A tile is full at W = 256 and then never changes; the partial tiles of a tree size are
//! written next to it (`.p/W`), so every checkpointed size can be read back. The hash of any
//! complete, aligned block of leaves (what the RFC 9162 proofs are made of) is either in a
//! tile or the root of ≤ 256 hashes of one, so a proof costs a few tile reads: the approach
//! of Go's `golang.org/x/mod/sumdb/tlog` TileHashReader. The proofs themselves are the ones
//! [`MerkleLog`] gives, computed by the same code over tiles instead of memory.
//!
//! Nothing here does I/O: a [`TileSource`] hands over tiles. A reader with asynchronous
//! storage asks [`tiles_needed`] which tiles an answer reads (which ones depends only on
//! sizes and indexes, never on hash values), fetches them, then computes from those.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use crate::ChainError;
use crate::merkle::{
    Hash, MerkleLog, StoredHashes, consistency_path, inclusion_path, node_hash, tree_root,
};

/// Levels of the tree one tile spans.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u16 = 1 << TILE_HEIGHT;
const HASH_LEN: usize = 32;
/// The spec's levels: 0 ..= 63.
const MAX_LEVEL: u8 = 63;

/// Which tile: a row of hashes at a tile level, or an entry bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileKind {
    /// Tile level L holds hashes of level 8L of the tree.
    Hashes(u8),
    Entries,
}

/// One tile's address: `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileRef {
    pub kind: TileKind,
    pub index: u64,
    /// 1 ..= 256; 256 is a full tile.
    pub width: u16,
}

impl TileRef {
    pub fn hashes(level: u8, index: u64, width: u16) -> Self {
        Self {
            kind: TileKind::Hashes(level),
            index,
            width,
        }
    }

    pub fn entries(index: u64, width: u16) -> Self {
        Self {
            kind: TileKind::Entries,
            index,
            width,
        }
    }

    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The same tile once full.
    pub fn full(&self) -> Self {
        Self {
            width: TILE_WIDTH,
            ..*self
        }
    }

    /// The spec's path, e.g. `tile/0/x001/x234/067.p/8`.
    pub fn path(&self) -> String {
        let mut path = String::from("tile/");
        match self.kind {
            TileKind::Hashes(level) => path.push_str(&level.to_string()),
            TileKind::Entries => path.push_str("entries"),
        }
        path.push('/');
        path.push_str(&encode_index(self.index));
        if !self.is_full() {
            path.push_str(&format!(".p/{}", self.width));
        }
        path
    }

    /// Parses a path written by [`TileRef::path`], and only such a path: one spelling per
    /// tile (no leading zero groups, no `.p/256`, no `.p/0`), so a cache or a store can key
    /// tiles by path.
    pub fn parse(path: &str) -> Result<Self, ChainError> {
        let bad = |why: &str| ChainError::BadTilePath(format!("{path:?}: {why}"));
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| bad("does not start with tile/"))?;
        let (kind, rest) = rest.split_once('/').ok_or_else(|| bad("no tile index"))?;
        let kind = match kind {
            "entries" => TileKind::Entries,
            level => TileKind::Hashes(
                level
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= MAX_LEVEL && l.to_string() == level)
                    .ok_or_else(|| bad("the level is not 0 ..= 63"))?,
            ),
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((index, width)) => {
                let width = width
                    .parse::<u16>()
                    .ok()
                    .filter(|w| (1..TILE_WIDTH).contains(w) && w.to_string() == width)
                    .ok_or_else(|| bad("a partial width is 1 ..= 255"))?;
                (index, width)
            }
            None => (rest, TILE_WIDTH),
        };
        let index =
            decode_index(index).ok_or_else(|| bad("the index is not x-prefixed 3-digit groups"))?;
        let tile = Self { kind, index, width };
        if tile.path() != path {
            return Err(bad("not the canonical spelling"));
        }
        Ok(tile)
    }
}

impl fmt::Display for TileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// `1234067` ─▶ `x001/x234/067`.
fn encode_index(index: u64) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

fn decode_index(text: &str) -> Option<u64> {
    let groups: Vec<&str> = text.split('/').collect();
    let (last, leading) = groups.split_last()?;
    let mut index: u64 = 0;
    for group in leading
        .iter()
        .map(|g| g.strip_prefix('x'))
        .chain([Some(*last)])
    {
        let group = group?;
        if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        index = index
            .checked_mul(1000)?
            .checked_add(group.parse::<u64>().ok()?)?;
    }
    Some(index)
}

/// An entry bundle: each entry as a big-endian u16 length and its bytes.
pub fn encode_bundle<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, ChainError> {
    let mut out = Vec::new();
    for entry in entries {
        let len = u16::try_from(entry.len()).map_err(|_| {
            ChainError::BadEntryBundle(format!("an entry of {} bytes is too long", entry.len()))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    Ok(out)
}

/// The entries of a bundle; a truncated entry is an error, not a shorter bundle.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<&[u8]>, ChainError> {
    let mut entries = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| ChainError::BadEntryBundle("a truncated length".into()))?;
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return Err(ChainError::BadEntryBundle(format!(
                "entry {} is cut short",
                entries.len()
            )));
        }
        let (entry, tail) = tail.split_at(len);
        entries.push(entry);
        rest = tail;
    }
    if entries.len() > usize::from(TILE_WIDTH) {
        return Err(ChainError::BadEntryBundle(format!(
            "{} entries in one bundle",
            entries.len()
        )));
    }
    Ok(entries)
}

/// The hashes of a hash tile, or an error if its length is not `width` hashes.
pub fn tile_hashes(tile: &TileRef, bytes: &[u8]) -> Result<Vec<Hash>, ChainError> {
    if bytes.len() != usize::from(tile.width) * HASH_LEN {
        return Err(ChainError::BadTile(format!(
            "{tile} holds {} bytes, not {} hashes",
            bytes.len(),
            tile.width
        )));
    }
    Ok(bytes
        .chunks_exact(HASH_LEN)
        .map(|h| h.try_into().expect("32 bytes"))
        .collect())
}

/// A tile to write, with its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct TileWrite {
    pub tile: TileRef,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for TileWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TileWrite({}, {} bytes)", self.tile, self.bytes.len())
    }
}

/// The tiles a tree of `size` leaves is read from at tile level `level`: how many full
/// tiles, and the width of the partial one after them (0 for none).
fn tiles_at(size: u64, level: u32) -> (u64, u16) {
    let count = size >> (TILE_HEIGHT * level);
    (
        count / u64::from(TILE_WIDTH),
        (count % u64::from(TILE_WIDTH)) as u16,
    )
}

/// The tiles (and their new partial ones) of levels whose count changed between sizes:
/// Go's `tlog.NewTiles`. Calls `each(level, index, width)`.
fn grown_tiles(old: u64, new: u64, mut each: impl FnMut(u32, u64, u16)) {
    let mut level = 0;
    while level < 8 && new >> (TILE_HEIGHT * level) > 0 {
        let (old_count, new_count) = (old >> (TILE_HEIGHT * level), new >> (TILE_HEIGHT * level));
        if old_count != new_count {
            let (full_tiles, partial) = tiles_at(new, level);
            for index in old_count / u64::from(TILE_WIDTH)..full_tiles {
                each(level, index, TILE_WIDTH);
            }
            if partial > 0 {
                each(level, full_tiles, partial);
            }
        }
        level += 1;
    }
}

/// The hash tiles a log grown from `old` to `new` leaves writes (new full tiles and the
/// partial tiles of `new`), read from `log`, which holds at least `new` leaves. `old` is the
/// last size written (0 for none).
pub fn growth_tiles(log: &MerkleLog, old: u64, new: u64) -> Result<Vec<TileWrite>, ChainError> {
    if old > new {
        return Err(ChainError::SizesOutOfOrder { old, new });
    }
    if new > log.size() {
        return Err(ChainError::SizeBeyondLog {
            size: new,
            log: log.size(),
        });
    }
    let mut out = Vec::new();
    grown_tiles(old, new, |level, index, width| {
        let mut bytes = Vec::with_capacity(usize::from(width) * HASH_LEN);
        let first = index * u64::from(TILE_WIDTH);
        for at in first..first + u64::from(width) {
            let hash = log
                .stored_hash(TILE_HEIGHT * level, at)
                .expect("a tile of a size the log has");
            bytes.extend_from_slice(&hash);
        }
        out.push(TileWrite {
            tile: TileRef::hashes(level as u8, index, width),
            bytes,
        });
    });
    Ok(out)
}

/// The first leaf whose entry a growth from `old` rewrites: the start of `old`'s partial
/// bundle. A writer keeps entries from here on.
pub fn bundle_start(old: u64) -> u64 {
    old - old % u64::from(TILE_WIDTH)
}

/// The entry bundles a log grown from `old` to `new` leaves writes: new full bundles and
/// the partial one of `new`. `entries` are the leaves' entries from leaf `first` on, with
/// `first ≤ bundle_start(old)` and at least up to `new`.
pub fn growth_bundles(
    old: u64,
    new: u64,
    first: u64,
    entries: &[impl AsRef<[u8]>],
) -> Result<Vec<TileWrite>, ChainError> {
    if old > new {
        return Err(ChainError::SizesOutOfOrder { old, new });
    }
    let end = first + entries.len() as u64;
    if first > bundle_start(old) || end < new {
        return Err(ChainError::BadEntryBundle(format!(
            "entries {first}..{end} do not cover the growth {old}..{new}"
        )));
    }
    let mut out = Vec::new();
    let mut failure = None;
    grown_tiles(old, new, |level, index, width| {
        if level != 0 || failure.is_some() {
            return;
        }
        let from = (index * u64::from(TILE_WIDTH) - first) as usize;
        let slice = &entries[from..from + usize::from(width)];
        match encode_bundle(slice.iter().map(AsRef::as_ref)) {
            Ok(bytes) => out.push(TileWrite {
                tile: TileRef::entries(index, width),
                bytes,
            }),
            Err(error) => failure = Some(error),
        }
    });
    match failure {
        Some(error) => Err(error),
        None => Ok(out),
    }
}

/// Hands out tiles: a store, a cache, a web server. `Ok(None)` when the tile is not there;
/// the bytes are the tile's (`width` hashes for a hash tile).
pub trait TileSource {
    fn tile(&self, level: u8, index: u64, width: u16) -> Result<Option<Vec<u8>>, ChainError>;
}

impl<T: TileSource + ?Sized> TileSource for &T {
    fn tile(&self, level: u8, index: u64, width: u16) -> Result<Option<Vec<u8>>, ChainError> {
        (**self).tile(level, index, width)
    }
}

/// Tiles already fetched, by address (what an asynchronous reader fills before computing).
impl TileSource for HashMap<TileRef, Vec<u8>> {
    fn tile(&self, level: u8, index: u64, width: u16) -> Result<Option<Vec<u8>>, ChainError> {
        Ok(self.get(&TileRef::hashes(level, index, width)).cloned())
    }
}

/// A log of `size` leaves, read through its tiles.
pub struct TiledLog<S> {
    source: S,
    size: u64,
    /// Tiles read so far in this answer: a proof reads several hashes from one tile.
    read: RefCell<HashMap<(u8, u64), Vec<Hash>>>,
}

impl<S: TileSource> TiledLog<S> {
    /// The log as its tiles for `size` leaves show it (the size of a checkpoint whose tiles
    /// are written). Every answer is about a tree of at most `size` leaves.
    pub fn new(source: S, size: u64) -> Self {
        Self {
            source,
            size,
            read: RefCell::new(HashMap::new()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn check_size(&self, size: u64) -> Result<(), ChainError> {
        if size > self.size {
            return Err(ChainError::SizeBeyondLog {
                size,
                log: self.size,
            });
        }
        Ok(())
    }

    pub fn root_at(&self, size: u64) -> Result<Hash, ChainError> {
        self.check_size(size)?;
        tree_root(self, size)
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ChainError> {
        self.check_size(size)?;
        inclusion_path(self, index, size)
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ChainError> {
        self.check_size(new)?;
        consistency_path(self, old, new)
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, ChainError> {
        if index >= self.size {
            return Err(ChainError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        self.stored(0, index)
    }

    /// The hashes of the hash tile at `level` and `index` as of this size, the full tile
    /// standing in for a partial one that is not (or no longer) there.
    fn row(&self, level: u8, index: u64) -> Result<Vec<Hash>, ChainError> {
        if let Some(row) = self.read.borrow().get(&(level, index)) {
            return Ok(row.clone());
        }
        let (full_tiles, partial) = tiles_at(self.size, u32::from(level));
        let width = match index.cmp(&full_tiles) {
            std::cmp::Ordering::Less => TILE_WIDTH,
            std::cmp::Ordering::Equal if partial > 0 => partial,
            _ => {
                return Err(ChainError::BadTile(format!(
                    "a log of {} leaves has no tile {index} at level {level}",
                    self.size
                )));
            }
        };
        let wanted = TileRef::hashes(level, index, width);
        let bytes = match self.source.tile(level, index, width)? {
            Some(bytes) => bytes,
            None if width < TILE_WIDTH => self
                .source
                .tile(level, index, TILE_WIDTH)?
                .map(|mut full| {
                    full.truncate(usize::from(width) * HASH_LEN);
                    full
                })
                .ok_or_else(|| ChainError::TileMissing(wanted.path()))?,
            None => return Err(ChainError::TileMissing(wanted.path())),
        };
        let row = tile_hashes(&wanted, &bytes)?;
        self.read.borrow_mut().insert((level, index), row.clone());
        Ok(row)
    }
}

impl<S: TileSource> StoredHashes for TiledLog<S> {
    /// Block `index` of level `level` = tile level L = level / 8, and within it the root
    /// of the 2^(level % 8) hashes of row 8L below the block.
    fn stored(&self, level: u32, index: u64) -> Result<Hash, ChainError> {
        let (tile_level, rise) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
        let (first, count) = (index << rise, 1u64 << rise);
        let tile_index = first / u64::from(TILE_WIDTH);
        let row = self.row(tile_level as u8, tile_index)?;
        let at = (first % u64::from(TILE_WIDTH)) as usize;
        let mut hashes = row
            .get(at..at + count as usize)
            .ok_or_else(|| {
                ChainError::BadTile(format!(
                    "tile {} of level {tile_level} is too short for size {}",
                    tile_index, self.size
                ))
            })?
            .to_vec();
        while hashes.len() > 1 {
            hashes = hashes
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(hashes[0])
    }
}

/// Which hash tiles `compute` reads: it runs once over a source that has every tile (of
/// zero hashes) and records what it was asked for. Which tiles a root or a proof reads
/// depends only on sizes and indexes, so the answer holds for the real tiles.
pub fn tiles_needed<T>(
    compute: impl FnOnce(&dyn TileSource) -> Result<T, ChainError>,
) -> Result<Vec<TileRef>, ChainError> {
    struct Recorder(RefCell<Vec<TileRef>>);
    impl TileSource for Recorder {
        fn tile(&self, level: u8, index: u64, width: u16) -> Result<Option<Vec<u8>>, ChainError> {
            self.0
                .borrow_mut()
                .push(TileRef::hashes(level, index, width));
            Ok(Some(vec![0; usize::from(width) * HASH_LEN]))
        }
    }
    let recorder = Recorder(RefCell::new(Vec::new()));
    compute(&recorder)?;
    let mut tiles = recorder.0.into_inner();
    tiles.sort_unstable();
    tiles.dedup();
    Ok(tiles)
}

/// The level-0 tiles (leaf hashes) of a log of `size` leaves from leaf `from` on: what a
/// reader scans to find a leaf's index.
pub fn leaf_tiles(from: u64, size: u64) -> Vec<TileRef> {
    let (full_tiles, partial) = tiles_at(size, 0);
    let mut tiles: Vec<TileRef> = (from / u64::from(TILE_WIDTH)..full_tiles)
        .map(|index| TileRef::hashes(0, index, TILE_WIDTH))
        .collect();
    if partial > 0 && from < size {
        tiles.push(TileRef::hashes(0, full_tiles, partial));
    }
    tiles
}

/// Every leaf entry of a log of `size` leaves, in order, read from its entry bundles
/// (those of [`leaf_tiles`], full and the last partial one) through `fetch`. A bundle that is
/// missing or holds the wrong number of entries is an error, never a shorter list.
pub fn read_entries(
    size: u64,
    mut fetch: impl FnMut(TileRef) -> Result<Option<Vec<u8>>, ChainError>,
) -> Result<Vec<Vec<u8>>, ChainError> {
    let mut entries = Vec::with_capacity(size as usize);
    for tile in leaf_tiles(0, size) {
        let bundle = TileRef::entries(tile.index, tile.width);
        let bytes = fetch(bundle)?.ok_or_else(|| ChainError::TileMissing(bundle.path()))?;
        let read = decode_bundle(&bytes)?;
        if read.len() != usize::from(tile.width) {
            return Err(ChainError::BadEntryBundle(format!(
                "{bundle} holds {} entries",
                read.len()
            )));
        }
        entries.extend(read.into_iter().map(<[u8]>::to_vec));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, verify_consistency, verify_inclusion};
    use proptest::prelude::*;

    #[test]
    fn paths_are_the_specs() {
        // The spec's examples (c2sp.org/tlog-tiles).
        assert_eq!(
            TileRef::hashes(0, 1234067, 256).path(),
            "tile/0/x001/x234/067"
        );
        assert_eq!(
            TileRef::hashes(0, 1234067, 8).path(),
            "tile/0/x001/x234/067.p/8"
        );
        assert_eq!(
            TileRef::entries(1234067, 8).path(),
            "tile/entries/x001/x234/067.p/8"
        );
        assert_eq!(TileRef::hashes(1, 0, 256).path(), "tile/1/000");
        assert_eq!(TileRef::hashes(3, 1000, 1).path(), "tile/3/x001/000.p/1");
        for path in [
            "tile/0/x001/x234/067",
            "tile/0/x001/x234/067.p/8",
            "tile/entries/x001/x234/067.p/8",
            "tile/entries/000",
            "tile/63/999",
        ] {
            assert_eq!(TileRef::parse(path).unwrap().path(), path);
        }
    }

    #[test]
    fn only_canonical_paths_parse() {
        for path in [
            "",
            "tile/",
            "tile/0",
            "tile/0/",
            "tile/0/67",
            "tile/0/0067",
            "tile/0/x000/067",
            "tile/0/001/067",
            "tile/0/x001/x234/067.p/0",
            "tile/0/x001/x234/067.p/256",
            "tile/0/x001/x234/067.p/08",
            "tile/0/x001/x234/067.p/",
            "tile/64/000",
            "tile/00/000",
            "tile/-1/000",
            "tile/0/x01a/000",
            "tile/0/../000",
            "tile/0/000/",
            "tile/entries/000.p/1/",
            "tile/data/000",
            "/tile/0/000",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
        ] {
            let refused = TileRef::parse(path);
            assert!(
                matches!(refused, Err(ChainError::BadTilePath(_))),
                "{path:?} parsed as {refused:?}"
            );
        }
    }

    #[test]
    fn bundles_round_trip_and_refuse_truncation() {
        let entries: Vec<Vec<u8>> = vec![vec![1; 80], vec![], vec![2; 3]];
        let bytes = encode_bundle(entries.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(&bytes[..2], &[0, 80]);
        let decoded = decode_bundle(&bytes).unwrap();
        assert_eq!(
            decoded,
            entries.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
        for cut in 1..bytes.len() {
            if decode_bundle(&bytes[..cut]).is_ok() {
                // Cuts at an entry boundary are shorter bundles, nothing else.
                assert!([82, 84].contains(&cut), "cut at {cut}");
            }
        }
        assert!(encode_bundle([&vec![0u8; 70_000][..]]).is_err());
    }

    /// The tiles of a log grown by `sizes`, written as a store would: a full tile once,
    /// partial ones next to it. Fails if a full tile would change.
    fn write_growth(log: &MerkleLog, sizes: &[u64]) -> HashMap<TileRef, Vec<u8>> {
        let mut store: HashMap<TileRef, Vec<u8>> = HashMap::new();
        let mut last = 0;
        for &size in sizes {
            for write in growth_tiles(log, last, size).unwrap() {
                if let Some(before) = store.get(&write.tile) {
                    assert_eq!(
                        before, &write.bytes,
                        "{} rewritten with other bytes",
                        write.tile
                    );
                }
                store.insert(write.tile, write.bytes);
            }
            last = size;
        }
        store
    }

    fn log_of(leaves: u64) -> MerkleLog {
        let mut log = MerkleLog::new();
        for n in 0..leaves {
            log.append(&n.to_be_bytes());
        }
        log
    }

    #[test]
    fn growth_writes_what_go_tlog_writes() {
        let log = log_of(70_000);
        let paths = |old, new| -> Vec<String> {
            growth_tiles(&log, old, new)
                .unwrap()
                .iter()
                .map(|w| w.tile.path())
                .collect()
        };
        assert_eq!(paths(0, 1), ["tile/0/000.p/1"]);
        assert_eq!(paths(0, 256), ["tile/0/000", "tile/1/000.p/1"]);
        assert_eq!(paths(256, 257), ["tile/0/001.p/1"]);
        assert_eq!(
            paths(300, 65_536 + 5),
            [
                "tile/0/001",
                "tile/0/002",
                "tile/0/003",
                "tile/0/004",
                "tile/0/005",
                "tile/0/006",
                "tile/0/007",
                "tile/0/008",
                "tile/0/009",
                "tile/0/010",
                "tile/0/011",
                "tile/0/012",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain((13..256).map(|n| TileRef::hashes(0, n, 256).path()))
            .chain([
                "tile/0/256.p/5".to_string(),
                "tile/1/000".to_string(),
                "tile/2/000.p/1".to_string()
            ])
            .collect::<Vec<_>>()
        );
        assert!(paths(500, 500).is_empty());
        // Three tile levels: proofs from them equal the log's.
        let store = write_growth(&log, &[300, 65_541, 70_000]);
        for size in [300, 65_536, 65_541, 70_000] {
            let tiled = TiledLog::new(&store, 70_000);
            assert_eq!(tiled.root_at(size).unwrap(), log.root_at(size).unwrap());
            for index in [0, 255, 256, 65_535, size - 1] {
                if index < size {
                    assert_eq!(
                        tiled.inclusion_proof(index, size).unwrap(),
                        log.inclusion_proof(index, size).unwrap()
                    );
                }
            }
            assert_eq!(
                tiled.consistency_proof(299, size).unwrap(),
                log.consistency_proof(299, size).unwrap()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For random growth sequences, roots and proofs from the tiles equal the log's and
        /// verify; a reader holding only the full tile where a partial was removed agrees.
        #[test]
        fn tiles_answer_as_the_log_does(
            steps in proptest::collection::vec(1u64..700, 1..12),
            picks in proptest::collection::vec(any::<u64>(), 12),
            drop_partials in any::<bool>(),
        ) {
            let sizes: Vec<u64> = steps.iter().scan(0, |size, step| { *size += step; Some(*size) }).collect();
            let final_size = *sizes.last().unwrap();
            let log = log_of(final_size);
            let mut store = write_growth(&log, &sizes);
            if drop_partials {
                let full: Vec<TileRef> = store.keys().filter(|t| t.is_full()).copied().collect();
                store.retain(|tile, _| tile.is_full() || !full.contains(&tile.full()));
            }
            for (n, &checkpoint) in sizes.iter().enumerate() {
                // Read as of every checkpoint: its partial tiles are there (or the full ones).
                let tiled = TiledLog::new(&store, checkpoint);
                let pick = |k: usize, below: u64| picks[(n + k) % picks.len()] % below.max(1);
                let size = 1 + pick(0, checkpoint);
                let old = pick(1, size + 1);
                let index = pick(2, size);
                prop_assert_eq!(tiled.root_at(size).unwrap(), log.root_at(size).unwrap());
                prop_assert_eq!(tiled.root_at(checkpoint).unwrap(), log.root_at(checkpoint).unwrap());
                let proof = tiled.inclusion_proof(index, size).unwrap();
                prop_assert_eq!(&proof, &log.inclusion_proof(index, size).unwrap());
                verify_inclusion(&log.leaf(index).unwrap(), index, size, &proof, &log.root_at(size).unwrap()).unwrap();
                prop_assert_eq!(tiled.leaf(index).unwrap(), leaf_hash(&index.to_be_bytes()));
                let consistency = tiled.consistency_proof(old, size).unwrap();
                prop_assert_eq!(&consistency, &log.consistency_proof(old, size).unwrap());
                verify_consistency(old, size, &log.root_at(old).unwrap(), &log.root_at(size).unwrap(), &consistency).unwrap();
                let beyond = matches!(tiled.root_at(checkpoint + 1), Err(ChainError::SizeBeyondLog { .. }));
                prop_assert!(beyond);
                // The tiles an answer reads are the ones it is said to need.
                let needed = tiles_needed(|source| TiledLog::new(source, checkpoint).inclusion_proof(index, size)).unwrap();
                let only: HashMap<TileRef, Vec<u8>> = needed.iter().map(|tile| {
                    let bytes = store.get(tile).or_else(|| store.get(&tile.full())).unwrap().clone();
                    (*tile, bytes[..usize::from(tile.width) * HASH_LEN].to_vec())
                }).collect();
                prop_assert_eq!(TiledLog::new(&only, checkpoint).inclusion_proof(index, size).unwrap(), proof);
            }
        }

        #[test]
        fn bundles_hold_each_leaf_once_in_order(steps in proptest::collection::vec(1u64..600, 1..8)) {
            let sizes: Vec<u64> = steps.iter().scan(0, |size, step| { *size += step; Some(*size) }).collect();
            let entries: Vec<Vec<u8>> = (0..*sizes.last().unwrap()).map(|n| n.to_be_bytes().to_vec()).collect();
            let mut bundles: HashMap<TileRef, Vec<u8>> = HashMap::new();
            let mut last = 0;
            for &size in &sizes {
                let first = bundle_start(last);
                for write in growth_bundles(last, size, first, &entries[first as usize..size as usize]).unwrap() {
                    if let Some(before) = bundles.get(&write.tile) {
                        prop_assert_eq!(before, &write.bytes);
                    }
                    bundles.insert(write.tile, write.bytes);
                }
                last = size;
            }
            // The final size's bundles, full ones and its partial one, are every entry in order.
            let mut read = Vec::new();
            for tile in leaf_tiles(0, last) {
                let bytes = &bundles[&TileRef::entries(tile.index, tile.width)];
                read.extend(decode_bundle(bytes).unwrap().into_iter().map(<[u8]>::to_vec));
            }
            prop_assert_eq!(read, entries);
        }
    }

    #[test]
    fn a_missing_or_short_tile_is_an_error() {
        let log = log_of(600);
        let mut store = write_growth(&log, &[600]);
        let tiled = TiledLog::new(&store, 600);
        assert!(tiled.root_at(600).is_ok());
        store.remove(&TileRef::hashes(0, 2, 88));
        let tiled = TiledLog::new(&store, 600);
        assert!(
            matches!(tiled.root_at(600), Err(ChainError::TileMissing(p)) if p == "tile/0/002.p/88")
        );
        store.insert(TileRef::hashes(0, 2, 88), vec![0; 31]);
        let tiled = TiledLog::new(&store, 600);
        assert!(matches!(tiled.root_at(600), Err(ChainError::BadTile(_))));
    }
}
