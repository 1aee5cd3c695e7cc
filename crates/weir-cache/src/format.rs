//! How a result becomes bytes in the store.

use serde::{Serialize, de::DeserializeOwned};

/// The serialization format of a stored result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON: readable by any language and by people. The default.
    Json,
    /// MessagePack: compact and fast, still readable from Python, Julia, JS…
    MsgPack,
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
    #[error("unknown serializer '{0}' (expected json or msgpack)")]
    Unknown(String),
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::MsgPack => "msgpack",
        }
    }

    pub fn from_name(name: &str) -> Result<Format, FormatError> {
        match name {
            "json" => Ok(Format::Json),
            "msgpack" => Ok(Format::MsgPack),
            other => Err(FormatError::Unknown(other.to_string())),
        }
    }

    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, FormatError> {
        Ok(match self {
            Format::Json => serde_json::to_vec(value)?,
            Format::MsgPack => rmp_serde::to_vec_named(value)?,
        })
    }

    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, FormatError> {
        Ok(match self {
            Format::Json => serde_json::from_slice(bytes)?,
            Format::MsgPack => rmp_serde::from_slice(bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
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
}
