//! Golden keys: fixed inputs and the exact keys they must give, checked in.
//!
//! Every key users have stored depends on the canonical encoding and on the key derivation.
//! If one of these tests fails, a change altered keys that already sit in people's stores:
//! either undo it, or (deliberately) bump `KEY_CONTEXT` in `key.rs`, say so in the README,
//! and replace the literals below with the new values the failure prints.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use weir_cache::KeyParts;
use weir_cache::canonical::digest;

fn hex(d: [u8; 32]) -> String {
    blake3::Hash::from_bytes(d).to_hex().to_string()
}

/// Compares every row and reports all mismatches at once, with the values to paste.
fn check(rows: &[(&str, String, &str)]) {
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(name, got, want)| format!("  {name}: expected {want}\n  {:w$}  got      {got}", "", w = name.len()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} golden values changed:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
}

#[derive(Serialize)]
struct Inner {
    label: String,
    weights: Vec<f64>,
}

#[derive(Serialize)]
struct Outer {
    id: u32,
    inner: Inner,
    tags: BTreeSet<String>,
    note: Option<String>,
}

#[derive(Serialize)]
struct Unit;

#[derive(Serialize)]
struct Newtype(i64);

#[derive(Serialize)]
struct Pair(i64, String);

#[derive(Serialize)]
enum Shape {
    Dot,
    Circle(f64),
    Rect(f64, f64),
    Poly { sides: u8, len: f64 },
}

#[derive(Serialize)]
#[serde(tag = "kind")]
enum Tagged {
    A { x: i32 },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Untagged {
    Num(i64),
}

fn map_entries() -> Vec<(String, i64)> {
    vec![
        ("zeta".into(), 26),
        ("alpha".into(), 1),
        ("mu".into(), 12),
        ("ünï".into(), -3),
    ]
}

#[test]
fn canonical_digests_of_fixed_inputs_do_not_change() {
    let d = |v: &dyn erased::Digest| hex(v.digest());
    let outer = Outer {
        id: 7,
        inner: Inner {
            label: "ĉu".into(),
            weights: vec![0.5, -2.25, 1e300],
        },
        tags: ["b", "a"].into_iter().map(String::from).collect(),
        note: None,
    };
    let hash_map: HashMap<String, i64> = map_entries().into_iter().collect();
    let btree_map: BTreeMap<String, i64> = map_entries().into_iter().collect();
    let rows = [
        (
            "0",
            d(&0i64),
            "0984d5b6dad91be4ff825fb07addb879c9125685100a1bfe82e6ba5c9760095c",
        ),
        (
            "1u8",
            d(&1u8),
            "a1a8458edebbd44f95eab3428948075d96f5939dfd9362805ec7015f45b1d221",
        ),
        (
            "1i64",
            d(&1i64),
            "a1a8458edebbd44f95eab3428948075d96f5939dfd9362805ec7015f45b1d221",
        ),
        (
            "-1i32",
            d(&-1i32),
            "f509cd2e27c16b50f18af3f36dd5d0704f8a0ba223c4073b35e5caf9173eac7b",
        ),
        (
            "i64::MIN",
            d(&i64::MIN),
            "4e8f6cb47b470cbc625e533a7d2b36a1e797c5bb59874357aa1fb42cacbddc50",
        ),
        (
            "u64::MAX",
            d(&u64::MAX),
            "16d25e6ef1bcf2e90b946a8785e88503260a691a9a1aaec775b06d846482c609",
        ),
        (
            "i128::MIN",
            d(&i128::MIN),
            "9fdba0ae6708b07d66865f7fb88ffb753ef38c12aa00476fc431e76771d6d29b",
        ),
        (
            "u128::MAX",
            d(&u128::MAX),
            "949c4ac2508646174d63e26fdcc03d8419c51a56c822b1f62d63987f2d4035bc",
        ),
        (
            "1.5",
            d(&1.5f64),
            "5a9ac2af4eb411cf9bb011d2d6c2c06f95abafe43130444bf1a3782601877142",
        ),
        (
            "0.1f32",
            d(&0.1f32),
            "65adebae6279396c7ab1a196e695c459e504137e57e24ca0e8ec8957ddf46aa8",
        ),
        (
            "0.0",
            d(&0.0f64),
            "4ce04b1c3b07c09e71d91bfade9974b404defe7c67ce13afc780509125f3b881",
        ),
        (
            "-0.0",
            d(&-0.0f64),
            "4ce04b1c3b07c09e71d91bfade9974b404defe7c67ce13afc780509125f3b881",
        ),
        (
            "NaN",
            d(&f64::NAN),
            "2612169b36c14a36388a234c28c28202393587d3bf2c6460330ed31e25b39ad2",
        ),
        (
            "-inf",
            d(&f64::NEG_INFINITY),
            "628abe5b8d255c50117934657d1d3366988c97f3cde5e4e78e70fc5810a0659e",
        ),
        (
            "true",
            d(&true),
            "0538661423236a5d8df6286a8633369e2a03c5f90d48eded333222dbee8cdbdd",
        ),
        (
            "false",
            d(&false),
            "9ab388bedc43eaf44150107d17ad090f6b1c34610f5740778ddb95d9f06576ee",
        ),
        (
            "char é",
            d(&'é'),
            "aa550a94a422ac3adc57c21ca9ba5eeeffdacce8e1bd448e9a7dd28d48c16c66",
        ),
        (
            "empty string",
            d(&""),
            "bbd8983ced369aba5472beaa61b7baaa5a80ef0457452fe33ef77ca36747d188",
        ),
        (
            "ascii string",
            d(&"hello"),
            "f3f6c3420c8f9ca288f9d0cc81c5c66142065188f357cbbee34e766402bdd030",
        ),
        (
            "unicode string",
            d(&"héllo wörld 🦀 日本語"),
            "c78605f5ad3247c8bb2b2a78eef7ee243a2d9e3bd73141e58c38f4ace8aed5ed",
        ),
        (
            "Some(3)",
            d(&Some(3i32)),
            "8a1534fbf9f4ac10cf5b86e4a087cea76735cfb05dace1e2247f28e20ba5107f",
        ),
        (
            "None",
            d(&None::<i32>),
            "34ab8b65c2622b75106dba567a23b032357b6f78bb9893221cf5c4a61cfc4689",
        ),
        (
            "vec",
            d(&vec![1i64, 2, 3]),
            "07f8e93a363c7e2f2c2d22fb91af900f942113b78c6df650522ba3d239d0b279",
        ),
        (
            "empty vec",
            d(&Vec::<i64>::new()),
            "f914cee2b730bf850ef6962a5dc23685f7a9e0b3d28d1137e6faaef9ce72ccc1",
        ),
        (
            "nested vec",
            d(&vec![vec!["a"], vec![], vec!["b", "c"]]),
            "5fa8a070f21fc55dcc5d6750aaf7f70bfa650d218e20122aef90cb8a27c55eac",
        ),
        (
            "unit",
            d(&()),
            "e04188fed98bfc7ab50f3310b8558c54f19d24a6fc3506d16c270053404c07b5",
        ),
        (
            "unit struct",
            d(&Unit),
            "e04188fed98bfc7ab50f3310b8558c54f19d24a6fc3506d16c270053404c07b5",
        ),
        (
            "newtype struct",
            d(&Newtype(5)),
            "46ef30d7893a78934aa92fe0cf388bd000c9c64eff24a22439d9efaf88f1cb2f",
        ),
        (
            "tuple struct",
            d(&Pair(5, "x".into())),
            "7222595c6e268322e211d99cbda5e95f171b95d5c2289d751817cfe757af83ff",
        ),
        (
            "tuple",
            d(&(1i32, "a", 2.5f64)),
            "2c8c8b08c0995129a6aeffbcc36926be6102041617d62bb5fd652d3b929f3663",
        ),
        (
            "nested struct",
            d(&outer),
            "23b23ebffc95810f799d6540098711a0375154c1f6e6b986e9547fb819e46a62",
        ),
        (
            "HashMap",
            d(&hash_map),
            "0e1feeb834f5afb9bb5191a415e7fb1c24873e3c47177876e81b7f5bb81a7cc2",
        ),
        (
            "BTreeMap",
            d(&btree_map),
            "0e1feeb834f5afb9bb5191a415e7fb1c24873e3c47177876e81b7f5bb81a7cc2",
        ),
        (
            "unit variant",
            d(&Shape::Dot),
            "17e3c5e5057ad697d3dca4fc3433162d3a981ec1d41f671bfe8b6aa4505e3b5d",
        ),
        (
            "newtype variant",
            d(&Shape::Circle(1.0)),
            "7d5e9b306b1228245d3598b6a75d57384819866e228ad9b5f0144fbbb3b36da9",
        ),
        (
            "tuple variant",
            d(&Shape::Rect(2.0, 3.0)),
            "3c31b5b2be989b03aeae640ec699fd0de29d180559388907fe52d3a503f44484",
        ),
        (
            "struct variant",
            d(&Shape::Poly { sides: 6, len: 1.5 }),
            "5c531a8acdd2364872b8c7a97a919ed0daa3d0b10e8fb3d7e127a8e001243d63",
        ),
        (
            "internally tagged",
            d(&Tagged::A { x: 1 }),
            "5ccd306d4a342082fd37b64604fc3e13f34271bee6a77311a22da4469e9ec44c",
        ),
        (
            "untagged",
            d(&Untagged::Num(1)),
            "a1a8458edebbd44f95eab3428948075d96f5939dfd9362805ec7015f45b1d221",
        ),
        (
            "bytes (serde_bytes)",
            d(&serde_bytes::Bytes::new(b"\x00\x01\xffraw")),
            "d1aae9920ebe0191171aa1df99708abb34070cef87f41cdad6fbcf59c449b719",
        ),
        (
            "Vec<u8> (a sequence)",
            d(&vec![0u8, 1, 255]),
            "97dc54c9f21cbf90cfb86871641ca58e39393e1c10481c4150db9754b74f7c5d",
        ),
    ];
    check(&rows.iter().map(|(n, g, w)| (*n, g.clone(), *w)).collect::<Vec<_>>());
}

#[test]
fn keys_of_fixed_parts_do_not_change() {
    let x = digest(&1i64).unwrap();
    let name = digest("alpha").unwrap();
    let inputs = [("x", x), ("name", name)];
    let base = KeyParts {
        task_path: "app::etl::load",
        cache_version: "",
        source_hash: None,
        inputs: &inputs,
        custom: None,
    };
    let key = |p: &KeyParts<'_>| p.key().to_hex();
    let rows = [
        (
            "inputs",
            key(&base),
            "43739ed9a1ad5b6775ef744daee9a06be3e71e8c96f965a1e262f57e52e26f73",
        ),
        (
            "no inputs",
            key(&KeyParts {
                inputs: &[],
                ..base.clone()
            }),
            "3850a8c0bc082dc2a3a706f535f274dd0651bda0c7e2e2ddc85a5fee03f12126",
        ),
        (
            "cache_version",
            key(&KeyParts {
                cache_version: "2",
                ..base.clone()
            }),
            "548f513f3b94900fef72f3c4345a1089b34a9cf4fd52929614cbfffc86d70918",
        ),
        (
            "inputs+source",
            key(&KeyParts {
                source_hash: Some("5f1b0c6c4f3c1e1a3e0e8e43c0b4c7d95c1f8f3a2d1b6a7e9c0d4e5f6a7b8c9d"),
                ..base.clone()
            }),
            "a468a960e0855c0d0e60c507d4aeac97272c55defbb389a00c0f7a7ff2f43582",
        ),
        (
            "custom key",
            key(&KeyParts {
                custom: Some(digest(&("k", 1)).unwrap()),
                ..base.clone()
            }),
            "13579497b86510e4b4a3b75c11b38e4a5b53a7fa0e69fc648f0a2b5c6e69112d",
        ),
        (
            "everything",
            key(&KeyParts {
                cache_version: "v3",
                source_hash: Some("abc"),
                custom: Some(digest(&"custom").unwrap()),
                ..base.clone()
            }),
            "6b61eb9b8c1d12428457ec101b69d76cad64a5d95ea1ea42f37107222d7e51d5",
        ),
    ];
    check(&rows.iter().map(|(n, g, w)| (*n, g.clone(), *w)).collect::<Vec<_>>());
}

/// `digest` is generic; this lets one table hold values of many types.
mod erased {
    pub trait Digest {
        fn digest(&self) -> [u8; 32];
    }
    impl<T: serde::Serialize + ?Sized> Digest for T {
        fn digest(&self) -> [u8; 32] {
            weir_cache::canonical::digest(self).expect("every golden input serializes")
        }
    }
}
