//! How a namespace's values become bytes for the shared tier (L2).
//!
//! L1 stores `Arc<V>` and never encodes; only values crossing into L2 pass through a [`Codec`]. A value that fails
//! to decode (a corrupt or foreign entry, or one written by an incompatible version of the type) is an L2 miss plus
//! a count in `strata_l2_corrupt_total`, never an error to the caller.

use std::marker::PhantomData;

/// Encodes and decodes one value type.
pub trait Codec<V>: Send + Sync + 'static {
    /// The value's bytes.
    fn encode(&self, value: &V) -> Result<Vec<u8>, String>;
    /// The value back from its bytes; `Err` describes what is wrong.
    fn decode(&self, bytes: &[u8]) -> Result<V, String>;
}

/// JSON through serde: readable in `redis-cli`, shared with the server's data API and other languages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<V: serde::Serialize + serde::de::DeserializeOwned> Codec<V> for Json {
    fn encode(&self, value: &V) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }
    fn decode(&self, bytes: &[u8]) -> Result<V, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Raw bytes (`Vec<u8>`) or UTF-8 text (`String`), stored as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(value.clone())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
}

impl Codec<String> for Raw {
    fn encode(&self, value: &String) -> Result<Vec<u8>, String> {
        Ok(value.as_bytes().to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
    }
}

/// A codec from two functions.
pub struct FnCodec<V, E, D> {
    encode: E,
    decode: D,
    _v: PhantomData<fn() -> V>,
}

impl<V, E, D> FnCodec<V, E, D>
where
    E: Fn(&V) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    D: Fn(&[u8]) -> Result<V, String> + Send + Sync + 'static,
{
    /// A codec calling `encode` and `decode`.
    pub fn new(encode: E, decode: D) -> Self {
        Self {
            encode,
            decode,
            _v: PhantomData,
        }
    }
}

impl<V: 'static, E, D> Codec<V> for FnCodec<V, E, D>
where
    E: Fn(&V) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    D: Fn(&[u8]) -> Result<V, String> + Send + Sync + 'static,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>, String> {
        (self.encode)(value)
    }
    fn decode(&self, bytes: &[u8]) -> Result<V, String> {
        (self.decode)(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_and_reject_garbage() {
        let json = Json;
        let bytes = Codec::<Vec<u32>>::encode(&json, &vec![1, 2]).unwrap();
        assert_eq!(
            Codec::<Vec<u32>>::decode(&json, &bytes).unwrap(),
            vec![1, 2]
        );
        assert!(Codec::<Vec<u32>>::decode(&json, b"{oops").is_err());
        assert!(Codec::<String>::decode(&Raw, &[0xff, 0xfe]).is_err());
        let c = FnCodec::new(
            |v: &u64| Ok(v.to_le_bytes().to_vec()),
            |b: &[u8]| {
                b.try_into()
                    .map(u64::from_le_bytes)
                    .map_err(|_| format!("{} bytes, expected 8", b.len()))
            },
        );
        assert_eq!(c.decode(&c.encode(&7).unwrap()).unwrap(), 7);
        assert_eq!(c.decode(b"abc").unwrap_err(), "3 bytes, expected 8");
    }
}
