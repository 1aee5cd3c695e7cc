//! A canonical byte encoding of any `serde::Serialize` value, for hashing.
//!
//! The same value gives the same bytes in any process on any machine:
//! - map entries (and struct fields) are sorted by their encoded key, so a `HashMap`
//!   gives one encoding whatever its iteration order, and a struct encodes like the
//!   equivalent map;
//! - integers encode by value, not by width (`1u8` and `1i64` are the same input);
//! - `-0.0` encodes as `0.0` and every NaN as one NaN;
//! - every item is tagged and length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ.
//!
//! Sequences keep their order, so a `HashSet` (which serde sees as a sequence) is *not*
//! canonical: use a `BTreeSet` for set-valued inputs.
//!
//! A file (a newtype named [`FILE_NEWTYPE`] around its path, which is how `weir::Artifact`
//! serializes) encodes as the BLAKE3 of its contents: where it lives is not part of it.

use serde::ser::{self, Serialize};

/// A value that could not be encoded (its `Serialize` impl returned an error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CanonicalError(String);

impl ser::Error for CanonicalError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CanonicalError(msg.to_string())
    }
}

/// The newtype name under which a value stands for the file at the path it wraps.
pub const FILE_NEWTYPE: &str = "$weir::Artifact";

/// Encodes `value` canonically.
pub fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let mut enc = Encoder {
        out: Vec::with_capacity(64),
    };
    value.serialize(&mut enc)?;
    Ok(enc.out)
}

/// BLAKE3 of the canonical encoding of `value`.
pub fn digest<T: Serialize + ?Sized>(value: &T) -> Result<[u8; 32], CanonicalError> {
    Ok(*blake3::hash(&to_bytes(value)?).as_bytes())
}

/// A file an encoding read, and the hash of its contents it was keyed by.
pub type KeyedFile = (std::path::PathBuf, [u8; 32]);

thread_local! {
    /// Files keyed by their contents while [`recording_files`] runs on this thread.
    static KEYED_FILES: std::cell::RefCell<Option<Vec<KeyedFile>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `encode` (synchronous, on this thread) and returns, with its result, every file it
/// keyed by contents, so that a caller can check the files still hold what they were keyed by
/// once it has used them (see [`files_unchanged`]).
pub fn recording_files<R>(encode: impl FnOnce() -> R) -> (R, Vec<KeyedFile>) {
    let outer = KEYED_FILES.with(|f| f.replace(Some(Vec::new())));
    let out = encode();
    let files = KEYED_FILES.with(|f| f.replace(outer)).unwrap_or_default();
    (out, files)
}

/// The first of `files` that now holds other contents than it was keyed by, if any. Cheap
/// for files unchanged since they were hashed (one `stat` each, see [`crate::filehash`]); a
/// file changed within the last moments is read again. A file that is gone is not taken as
/// changed: a temporary artifact goes with its last clone, which the task that read it
/// drops.
pub fn files_unchanged(files: &[KeyedFile]) -> Result<(), std::path::PathBuf> {
    for (path, hash) in files {
        match crate::filehash::digest_file(path) {
            Ok(now) if now == *hash => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => return Err(path.clone()),
        }
    }
    Ok(())
}

struct Encoder {
    out: Vec<u8>,
}

mod tag {
    pub const NONE: u8 = b'N';
    pub const SOME: u8 = b'Y';
    pub const UNIT: u8 = b'U';
    pub const FALSE: u8 = b'f';
    pub const TRUE: u8 = b't';
    pub const INT: u8 = b'I';
    pub const BIG_UINT: u8 = b'J';
    pub const FLOAT: u8 = b'F';
    pub const CHAR: u8 = b'C';
    pub const STR: u8 = b'S';
    pub const BYTES: u8 = b'B';
    pub const SEQ: u8 = b'L';
    pub const SEQ_END: u8 = b'l';
    pub const MAP: u8 = b'M';
    pub const MAP_END: u8 = b'm';
    pub const VARIANT: u8 = b'V';
    pub const FILE: u8 = b'A';
}

impl Encoder {
    fn len_prefixed(&mut self, tag: u8, bytes: &[u8]) {
        self.out.push(tag);
        self.out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.out.extend_from_slice(bytes);
    }

    fn int(&mut self, v: i128) {
        self.out.push(tag::INT);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn float(&mut self, v: f64) {
        let v = if v == 0.0 {
            0.0 // folds -0.0 into 0.0
        } else if v.is_nan() {
            f64::NAN
        } else {
            v
        };
        let bits = if v.is_nan() {
            0x7ff8_0000_0000_0000u64
        } else {
            v.to_bits()
        };
        self.out.push(tag::FLOAT);
        self.out.extend_from_slice(&bits.to_le_bytes());
    }

    /// A file, by the hash of its contents (remembered per file version, see
    /// [`crate::filehash`]).
    fn file<T: Serialize + ?Sized>(&mut self, path: &T) -> Result<(), CanonicalError> {
        let path = match serde_json::to_value(path) {
            Ok(serde_json::Value::String(p)) => std::path::PathBuf::from(p),
            Ok(other) => return Err(CanonicalError(format!("a file input names no path ({other})"))),
            Err(e) => return Err(CanonicalError(format!("a file input's path cannot be read: {e}"))),
        };
        let hash = crate::filehash::digest_file(&path).map_err(|e| {
            CanonicalError(format!(
                "cannot read the file {} to key it by its contents: {e}",
                path.display()
            ))
        })?;
        KEYED_FILES.with(|f| {
            if let Some(files) = f.borrow_mut().as_mut()
                && !files.iter().any(|(p, _)| *p == path)
            {
                files.push((path.clone(), hash));
            }
        });
        self.out.push(tag::FILE);
        self.out.extend_from_slice(&hash);
        Ok(())
    }

    fn variant(&mut self, name: &str) {
        self.out.push(tag::VARIANT);
        self.len_prefixed(tag::STR, name.as_bytes());
    }
}

/// Collects map entries so they can be sorted before they are written.
struct MapEncoder<'a> {
    parent: &'a mut Encoder,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    pending_key: Option<Vec<u8>>,
}

impl MapEncoder<'_> {
    fn finish(mut self) {
        self.entries.sort_unstable();
        self.parent.out.push(tag::MAP);
        for (k, v) in &self.entries {
            self.parent.out.extend_from_slice(k);
            self.parent.out.extend_from_slice(v);
        }
        self.parent.out.push(tag::MAP_END);
    }
}

impl<'a> ser::Serializer for &'a mut Encoder {
    type Ok = ();
    type Error = CanonicalError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = MapEncoder<'a>;
    type SerializeStruct = MapEncoder<'a>;
    type SerializeStructVariant = MapEncoder<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), CanonicalError> {
        self.out.push(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), CanonicalError> {
        self.int(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), CanonicalError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), CanonicalError> {
        match i128::try_from(v) {
            Ok(i) => self.int(i),
            Err(_) => {
                self.out.push(tag::BIG_UINT);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), CanonicalError> {
        self.float(v.into());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), CanonicalError> {
        self.float(v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), CanonicalError> {
        self.out.push(tag::CHAR);
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        self.len_prefixed(tag::STR, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonicalError> {
        self.len_prefixed(tag::BYTES, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), CanonicalError> {
        self.out.push(tag::NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        self.out.push(tag::SOME);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonicalError> {
        self.out.push(tag::UNIT);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonicalError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), CanonicalError> {
        // By name, not index: reordering an enum's variants keeps every key.
        self.variant(variant);
        self.out.push(tag::UNIT);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        if name == FILE_NEWTYPE {
            return self.file(value);
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        self.variant(variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, CanonicalError> {
        self.out.push(tag::SEQ);
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, CanonicalError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, CanonicalError> {
        self.variant(variant);
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapEncoder<'a>, CanonicalError> {
        Ok(MapEncoder {
            parent: self,
            entries: Vec::with_capacity(len.unwrap_or(0)),
            pending_key: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapEncoder<'a>, CanonicalError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapEncoder<'a>, CanonicalError> {
        self.variant(variant);
        self.serialize_map(Some(len))
    }
}

impl ser::SerializeSeq for &mut Encoder {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.out.push(tag::SEQ_END);
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Encoder {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonicalError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for &mut Encoder {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonicalError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for &mut Encoder {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CanonicalError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for MapEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CanonicalError> {
        self.pending_key = Some(to_bytes(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| CanonicalError("map value serialized before its key".into()))?;
        self.entries.push((key, to_bytes(value)?));
        Ok(())
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStruct for MapEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), CanonicalError> {
        self.entries.push((to_bytes(key)?, to_bytes(value)?));
        Ok(())
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStructVariant for MapEncoder<'_> {
    type Ok = ();
    type Error = CanonicalError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), CanonicalError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<(), CanonicalError> {
        self.finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;

    #[test]
    fn hashmap_order_does_not_matter() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..100 {
            a.insert(format!("k{i}"), i);
        }
        for i in (0..100).rev() {
            b.insert(format!("k{i}"), i);
        }
        let sorted: BTreeMap<_, _> = a.clone().into_iter().collect();
        assert_eq!(to_bytes(&a).unwrap(), to_bytes(&b).unwrap());
        assert_eq!(to_bytes(&a).unwrap(), to_bytes(&sorted).unwrap());
    }

    #[test]
    fn floats_are_normalised() {
        assert_eq!(to_bytes(&-0.0f64).unwrap(), to_bytes(&0.0f64).unwrap());
        let other_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        assert!(other_nan.is_nan());
        assert_eq!(to_bytes(&f64::NAN).unwrap(), to_bytes(&other_nan).unwrap());
        assert_eq!(to_bytes(&-f64::NAN).unwrap(), to_bytes(&f64::NAN).unwrap());
        assert_ne!(to_bytes(&1.0f64).unwrap(), to_bytes(&-1.0f64).unwrap());
    }

    #[test]
    fn boundaries_are_unambiguous() {
        assert_ne!(to_bytes(&("ab", "c")).unwrap(), to_bytes(&("a", "bc")).unwrap());
        assert_ne!(
            to_bytes(&vec![vec![1], vec![]]).unwrap(),
            to_bytes(&vec![vec![], vec![1]]).unwrap()
        );
        assert_ne!(to_bytes(&Some(())).unwrap(), to_bytes(&None::<()>).unwrap());
        assert_ne!(to_bytes(&"1").unwrap(), to_bytes(&1).unwrap());
    }

    #[test]
    fn integer_width_does_not_matter_but_value_does() {
        assert_eq!(to_bytes(&7u8).unwrap(), to_bytes(&7i64).unwrap());
        assert_ne!(to_bytes(&7u8).unwrap(), to_bytes(&8u8).unwrap());
        assert_ne!(to_bytes(&u128::MAX).unwrap(), to_bytes(&-1i128).unwrap());
    }

    #[derive(Serialize)]
    struct Ab {
        a: i32,
        b: String,
    }

    #[derive(Serialize)]
    struct Ba {
        b: String,
        a: i32,
    }

    #[derive(Serialize)]
    enum Shape {
        Circle { r: f64 },
        Square(f64),
        Dot,
    }

    #[test]
    fn struct_field_order_does_not_matter() {
        let x = Ab { a: 1, b: "x".into() };
        let y = Ba { b: "x".into(), a: 1 };
        assert_eq!(to_bytes(&x).unwrap(), to_bytes(&y).unwrap());
    }

    #[test]
    fn enum_variants_differ() {
        let all = [
            to_bytes(&Shape::Circle { r: 1.0 }).unwrap(),
            to_bytes(&Shape::Square(1.0)).unwrap(),
            to_bytes(&Shape::Dot).unwrap(),
        ];
        assert_ne!(all[0], all[1]);
        assert_ne!(all[1], all[2]);
        assert_ne!(all[0], all[2]);
    }

    proptest! {
        #[test]
        fn any_insertion_order_gives_one_encoding(entries in proptest::collection::vec((any::<String>(), any::<i64>()), 0..40)) {
            let forward: HashMap<String, i64> = entries.iter().cloned().collect();
            let mut backward: HashMap<String, i64> = HashMap::new();
            // Insert in reverse but keep "last write wins" semantics identical to forward.
            for (k, v) in entries.iter().rev() {
                backward.entry(k.clone()).or_insert(*v);
            }
            let mut expected: HashMap<String, i64> = HashMap::new();
            for (k, v) in entries.iter().rev() {
                expected.entry(k.clone()).or_insert(*v);
            }
            prop_assert_eq!(to_bytes(&expected).unwrap(), to_bytes(&backward).unwrap());
            let sorted: BTreeMap<String, i64> = forward.clone().into_iter().collect();
            prop_assert_eq!(to_bytes(&forward).unwrap(), to_bytes(&sorted).unwrap());
        }

        #[test]
        fn different_vectors_give_different_encodings(a in proptest::collection::vec(any::<i64>(), 0..20), b in proptest::collection::vec(any::<i64>(), 0..20)) {
            prop_assert_eq!(a == b, to_bytes(&a).unwrap() == to_bytes(&b).unwrap());
        }

        #[test]
        fn different_strings_give_different_encodings(a in proptest::collection::vec(any::<String>(), 0..6), b in proptest::collection::vec(any::<String>(), 0..6)) {
            prop_assert_eq!(a == b, to_bytes(&a).unwrap() == to_bytes(&b).unwrap());
        }
    }
}
