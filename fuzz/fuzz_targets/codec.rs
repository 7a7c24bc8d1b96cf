//! Arbitrary bytes as a Redis stream entry's payload: decoding any of the three
//! message types must never panic, and whatever decodes must survive
//! encode → decode unchanged (and encode the same way twice).
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::{decode, encode, ChannelMessage, GroupMessage, Reply, Versioned};

fn round_trip<T>(bytes: &[u8])
where
    T: Serialize + DeserializeOwned + Versioned + PartialEq + Debug,
{
    let Ok(message) = decode::<T>(bytes) else { return };
    let encoded = encode(&message);
    let again = match decode::<T>(&encoded) {
        Ok(again) => again,
        Err(error) => panic!("{message:?} encoded as {encoded:02x?} does not decode: {error}"),
    };
    assert_eq!(again, message, "changed by encode → decode");
    assert_eq!(encode(&again), encoded, "encodes differently the second time");
}

fuzz_target!(|bytes: &[u8]| {
    round_trip::<ChannelMessage>(bytes);
    round_trip::<Reply>(bytes);
    round_trip::<GroupMessage>(bytes);
});
