//! How a result becomes bytes in the store.

use std::any::{Any, TypeId};

use serde::de::{self, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible};
use serde::{Serialize, de::DeserializeOwned};

/// The serialization format of a stored result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON: readable by any language and by people. The default.
    Json,
    /// MessagePack: compact and fast, still readable from Python, Julia, JS… Byte buffers
    /// inside it (`serde_bytes`, `bytes::Bytes`) are stored as MessagePack `bin`.
    MsgPack,
    /// The bytes themselves, for results that are one byte buffer (`Vec<u8>`,
    /// `bytes::Bytes`, `serde_bytes::ByteBuf`): no encoding, no growth, any reader.
    Raw,
}

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("MessagePack encode: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
    #[error("MessagePack decode: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    #[error("raw: {0}")]
    Raw(String),
    #[error("unknown serializer '{0}' (expected json, msgpack or raw)")]
    Unknown(String),
}

const NOT_BYTES: &str = "the raw serializer stores one byte buffer (Vec<u8>, bytes::Bytes, serde_bytes::ByteBuf)";

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::MsgPack => "msgpack",
            Format::Raw => "raw",
        }
    }

    pub fn from_name(name: &str) -> Result<Format, FormatError> {
        match name {
            "json" => Ok(Format::Json),
            "msgpack" => Ok(Format::MsgPack),
            "raw" => Ok(Format::Raw),
            other => Err(FormatError::Unknown(other.to_string())),
        }
    }

    /// The format a task's result of type `T` is stored in: byte buffers raw (a 512 MiB
    /// `Vec<u8>` as JSON numbers is ~1.8 GB of text), anything else as `self`.
    pub fn for_output<T: Any>(self) -> Format {
        let t = TypeId::of::<T>();
        if t == TypeId::of::<Vec<u8>>()
            || t == TypeId::of::<bytes::Bytes>()
            || t == TypeId::of::<serde_bytes::ByteBuf>()
        {
            Format::Raw
        } else {
            self
        }
    }

    pub fn encode<T: Serialize + Any>(self, value: &T) -> Result<Vec<u8>, FormatError> {
        Ok(match self {
            Format::Json => serde_json::to_vec(value)?,
            Format::MsgPack => rmp_serde::to_vec_named(value)?,
            Format::Raw => match (value as &dyn Any).downcast_ref::<Vec<u8>>() {
                // Serde would hand a Vec<u8> over one byte at a time.
                Some(v) => v.clone(),
                None => {
                    let mut out = RawSink {
                        out: Vec::new(),
                        in_seq: false,
                    };
                    value.serialize(&mut out).map_err(|e| FormatError::Raw(e.0))?;
                    out.out
                }
            },
        })
    }

    pub fn decode<T: DeserializeOwned + Any>(self, bytes: &[u8]) -> Result<T, FormatError> {
        Ok(match self {
            Format::Json => serde_json::from_slice(bytes)?,
            Format::MsgPack => rmp_serde::from_slice(bytes)?,
            Format::Raw => {
                if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
                    let v: Box<dyn Any> = Box::new(bytes.to_vec());
                    if let Ok(v) = v.downcast::<T>() {
                        return Ok(*v);
                    }
                }
                T::deserialize(RawSource(bytes)).map_err(|e: de::value::Error| FormatError::Raw(e.to_string()))?
            }
        })
    }
}

#[derive(Debug)]
struct RawError(String);

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RawError {}

impl ser::Error for RawError {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        RawError(msg.to_string())
    }
}

/// Collects a value that serializes as bytes or as a sequence of `u8`; refuses the rest,
/// so raw decoding can give back exactly what was encoded.
struct RawSink {
    out: Vec<u8>,
    in_seq: bool,
}

fn not_bytes<T>(what: &str) -> Result<T, RawError> {
    Err(RawError(format!("{NOT_BYTES}, not {what}")))
}

macro_rules! refuse {
    ($($method:ident($($arg:ty),*) -> $ret:ty: $what:literal;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ret, RawError> { not_bytes($what) })*
    };
}

impl ser::Serializer for &mut RawSink {
    type Ok = ();
    type Error = RawError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Impossible<(), RawError>;
    type SerializeTupleVariant = Impossible<(), RawError>;
    type SerializeMap = Impossible<(), RawError>;
    type SerializeStruct = Impossible<(), RawError>;
    type SerializeStructVariant = Impossible<(), RawError>;

    fn serialize_u8(self, v: u8) -> Result<(), RawError> {
        if !self.in_seq {
            return not_bytes("a single u8");
        }
        self.out.push(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), RawError> {
        if self.in_seq {
            return not_bytes("nested buffers");
        }
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, RawError> {
        if self.in_seq {
            return not_bytes("nested sequences");
        }
        self.in_seq = true;
        self.out.reserve(len.unwrap_or(0));
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, RawError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), RawError> {
        value.serialize(self)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), RawError> {
        not_bytes("an Option")
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), RawError> {
        not_bytes("an enum")
    }
    refuse! {
        serialize_bool(bool) -> (): "a bool";
        serialize_i8(i8) -> (): "an integer";
        serialize_i16(i16) -> (): "an integer";
        serialize_i32(i32) -> (): "an integer";
        serialize_i64(i64) -> (): "an integer";
        serialize_u16(u16) -> (): "an integer";
        serialize_u32(u32) -> (): "an integer";
        serialize_u64(u64) -> (): "an integer";
        serialize_f32(f32) -> (): "a float";
        serialize_f64(f64) -> (): "a float";
        serialize_char(char) -> (): "a char";
        serialize_str(&str) -> (): "a string";
        serialize_none() -> (): "an Option";
        serialize_unit() -> (): "()";
        serialize_unit_struct(&'static str) -> (): "a unit struct";
        serialize_unit_variant(&'static str, u32, &'static str) -> (): "an enum";
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct: "a tuple struct";
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant: "an enum";
        serialize_map(Option<usize>) -> Self::SerializeMap: "a map";
        serialize_struct(&'static str, usize) -> Self::SerializeStruct: "a struct";
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant: "an enum";
    }
}

impl ser::SerializeSeq for &mut RawSink {
    type Ok = ();
    type Error = RawError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RawError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), RawError> {
        self.in_seq = false;
        Ok(())
    }
}

impl ser::SerializeTuple for &mut RawSink {
    type Ok = ();
    type Error = RawError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RawError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), RawError> {
        self.in_seq = false;
        Ok(())
    }
}

/// Gives stored bytes to a type that asks for a byte buffer or a sequence of `u8`, and to
/// nothing else: a result whose type changed (say, to `String`) is refused, not guessed.
struct RawSource<'a>(&'a [u8]);

impl<'de> de::Deserializer<'de> for RawSource<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(format!(
            "{NOT_BYTES}; this output type asks for something else"
        )))
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_bytes(self.0)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_byte_buf(self.0.to_vec())
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // Through `deserialize_any`, which also fails if the type leaves bytes unread.
        de::value::SeqDeserializer::new(self.0.iter().map(|&b| RawByte(b))).deserialize_any(visitor)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string option unit
        unit_struct tuple_struct map struct enum identifier ignored_any
    }
}

/// One element of a raw sequence: a `u8` and nothing wider, so `Vec<u16>` is refused.
struct RawByte(u8);

impl<'de> IntoDeserializer<'de, de::value::Error> for RawByte {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for RawByte {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(format!(
            "{NOT_BYTES}; this output type asks for other elements"
        )))
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_u8(self.0)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn both_formats_round_trip_and_reject_wrong_types() {
        for f in [Format::Json, Format::MsgPack] {
            let bytes = f.encode(&vec![1i64, 2, 3]).unwrap();
            let back: Vec<i64> = f.decode(&bytes).unwrap();
            assert_eq!(back, vec![1, 2, 3]);
            assert!(f.decode::<String>(&bytes).is_err(), "{f:?} must reject a changed type");
            assert_eq!(Format::from_name(f.name()).unwrap(), f);
        }
        assert!(Format::from_name("pickle").is_err());
    }

    fn sample() -> Vec<u8> {
        (0..=255u8).cycle().take(3000).collect()
    }

    #[test]
    fn byte_buffers_are_stored_as_themselves() {
        let data = sample();
        assert_eq!(Format::Json.for_output::<Vec<u8>>(), Format::Raw);
        assert_eq!(Format::MsgPack.for_output::<bytes::Bytes>(), Format::Raw);
        assert_eq!(Format::Json.for_output::<serde_bytes::ByteBuf>(), Format::Raw);
        assert_eq!(Format::Json.for_output::<Vec<u16>>(), Format::Json);
        assert_eq!(Format::MsgPack.for_output::<String>(), Format::MsgPack);
        assert_eq!(Format::from_name("raw").unwrap(), Format::Raw);

        let raw = Format::Raw;
        assert_eq!(raw.encode(&data).unwrap(), data);
        assert_eq!(raw.decode::<Vec<u8>>(&data).unwrap(), data);
        let b = bytes::Bytes::from(data.clone());
        assert_eq!(raw.encode(&b).unwrap(), data);
        assert_eq!(raw.decode::<bytes::Bytes>(&data).unwrap(), b);
        let bb = serde_bytes::ByteBuf::from(data.clone());
        assert_eq!(raw.encode(&bb).unwrap(), data);
        assert_eq!(raw.decode::<serde_bytes::ByteBuf>(&data).unwrap(), bb);
        // Other shapes of bytes go through serde, both ways.
        let boxed: Box<[u8]> = data.clone().into_boxed_slice();
        assert_eq!(raw.encode(&boxed).unwrap(), data);
        assert_eq!(raw.decode::<Box<[u8]>>(&data).unwrap(), boxed);
        assert_eq!(raw.encode(&[1u8, 2, 3]).unwrap(), vec![1, 2, 3]);
        assert_eq!(raw.decode::<[u8; 3]>(&[1, 2, 3]).unwrap(), [1, 2, 3]);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);
        assert_eq!(raw.encode(&Blob(data.clone())).unwrap(), data);
        assert_eq!(raw.decode::<Blob>(&data).unwrap(), Blob(data.clone()));
        assert!(raw.encode(&Vec::<u8>::new()).unwrap().is_empty());
    }

    #[test]
    fn raw_refuses_what_is_not_one_byte_buffer() {
        let raw = Format::Raw;
        for err in [
            raw.encode(&"text".to_string()).unwrap_err(),
            raw.encode(&7u8).unwrap_err(),
            raw.encode(&vec![1u16, 2]).unwrap_err(),
            raw.encode(&vec![vec![1u8], vec![2]]).unwrap_err(),
            raw.encode(&Some(vec![1u8])).unwrap_err(),
            raw.encode(&(1u8, "x")).unwrap_err(),
        ] {
            assert!(err.to_string().contains("one byte buffer"), "{err}");
        }
        // A stored buffer read as another type (the task's output type changed) is refused,
        // never reinterpreted.
        let stored = b"hello".to_vec();
        assert!(raw.decode::<String>(&stored).is_err());
        assert!(raw.decode::<Vec<u16>>(&stored).is_err());
        assert!(raw.decode::<Vec<i64>>(&stored).is_err());
        assert!(raw.decode::<Option<Vec<u8>>>(&stored).is_err());
        assert!(raw.decode::<u8>(&stored).is_err());
        assert!(raw.decode::<[u8; 4]>(&stored).is_err(), "length differs");
    }

    #[test]
    fn msgpack_stores_serde_bytes_fields_as_bin() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Frame {
            name: String,
            #[serde(with = "serde_bytes")]
            pixels: Vec<u8>,
            shared: bytes::Bytes,
        }
        let frame = Frame {
            name: "f".into(),
            pixels: vec![200; 100_000],
            shared: bytes::Bytes::from(vec![255; 100_000]),
        };
        let packed = Format::MsgPack.encode(&frame).unwrap();
        assert!(packed.len() < 200_000 + 64, "{} bytes", packed.len());
        assert_eq!(Format::MsgPack.decode::<Frame>(&packed).unwrap(), frame);
        // JSON has no bytes: the same value is text numbers, ~4 characters per byte.
        assert!(Format::Json.encode(&frame).unwrap().len() > 700_000);
    }
}
