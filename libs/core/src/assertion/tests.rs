use std::sync::Arc;

use super::*;
use ed25519_dalek::Signer as _;

const NOW: i64 = 1_700_000_000;

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).expect("valid tenant id")
}

fn device(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid device id")
}

fn claims() -> Claims {
    Claims::new(tenant("t1"), device("d1"), None, NOW, 300)
}

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::new(&key.jwks(), VerifierConfig::default())
}

/// Swaps one base64url character for another, which changes the decoded bytes but stays decodable.
fn flip(part: &str, at: usize) -> String {
    let mut bytes = part.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

/// A token with arbitrary header and payload JSON, validly signed, to reach the checks after the signature.
fn sign_raw(key: &SigningKey, header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = key.key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[test]
fn sign_verify_round_trip() {
    let key = SigningKey::generate();
    let token = key.sign(&claims());
    let got = verifier(&key).verify(&token, NOW).expect("valid token");
    assert_eq!(*got, claims());

    let p = parts(&token);
    assert_eq!(p.len(), 3);
    assert!(!token.contains('='));
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[0]).expect("b64")).expect("json");
    assert_eq!(
        header,
        serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid()})
    );
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).expect("b64")).expect("json");
    assert_eq!(
        payload,
        serde_json::json!({"sub": "d1", "ten": "t1", "iat": NOW, "exp": NOW + 300})
    );
}

#[test]
fn kid_is_deterministic_from_public_key() {
    let key = SigningKey::generate();
    assert_eq!(key.kid().len(), 16);
    let again = SigningKey::from_seed_b64(&key.to_seed_b64()).expect("own seed parses");
    assert_eq!(again.kid(), key.kid());
    assert_ne!(SigningKey::generate().kid(), key.kid());
}

#[test]
fn seed_b64_accepts_config_forms_and_refuses_garbage() {
    let seed = [7u8; 32];
    let key = SigningKey::from_seed(&seed);
    for s in [
        URL_SAFE_NO_PAD.encode(seed),
        format!("ed25519:{}", URL_SAFE_NO_PAD.encode(seed)),
        base64::engine::general_purpose::STANDARD.encode(seed),
        format!("  {}\n", URL_SAFE_NO_PAD.encode(seed)),
    ] {
        let parsed = SigningKey::from_seed_b64(&s).expect("seed parses");
        assert_eq!(parsed.kid(), key.kid(), "{s}");
    }
    for bad in [
        "",
        "ed25519:",
        "not base64 at all",
        &URL_SAFE_NO_PAD.encode([1u8; 31]),
        "é".repeat(43).as_str(),
    ] {
        assert!(
            matches!(
                SigningKey::from_seed_b64(bad),
                Err(KeyError::InvalidSeed(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn debug_does_not_leak_the_seed() {
    let key = SigningKey::from_seed(&[9u8; 32]);
    let debug = format!("{key:?}");
    assert!(debug.contains(key.kid()));
    assert!(!debug.contains(&URL_SAFE_NO_PAD.encode([9u8; 32])));
}

#[test]
fn tampered_payload_is_bad_signature() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let p = parts(&key.sign(&claims()));
    // Substituting another valid payload is the realistic attack: claims for a different device.
    let other = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&Claims::new(tenant("t1"), device("d2"), None, NOW, 300)).expect("json"),
    );
    assert_eq!(
        v.verify(&format!("{}.{other}.{}", p[0], p[2]), NOW),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        v.verify(&format!("{}.{}.{}", p[0], flip(&p[1], 3), p[2]), NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn tampered_signature_is_bad_signature() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let p = parts(&key.sign(&claims()));
    assert_eq!(
        v.verify(&format!("{}.{}.{}", p[0], p[1], flip(&p[2], 10)), NOW),
        Err(VerifyError::BadSignature)
    );
    // An all-zero signature is the classic bypass attempt.
    let zeros = URL_SAFE_NO_PAD.encode([0u8; 64]);
    assert_eq!(
        v.verify(&format!("{}.{}.{zeros}", p[0], p[1]), NOW),
        Err(VerifyError::BadSignature)
    );
    // A signature of the wrong length never reaches the verifier.
    let short = URL_SAFE_NO_PAD.encode([0u8; 63]);
    assert!(v
        .verify(&format!("{}.{}.{short}", p[0], p[1]), NOW)
        .expect_err("refused")
        .is_decode_error());
}

#[test]
fn other_key_with_same_kid_is_bad_signature() {
    let key = SigningKey::generate();
    let forger = SigningKey::with_kid(
        ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng),
        key.kid().to_owned(),
    );
    let token = forger.sign(&claims());
    assert_eq!(
        verifier(&key).verify(&token, NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn unknown_kid_names_the_kid() {
    let key = SigningKey::generate();
    let other = SigningKey::generate();
    let v = verifier(&key);
    assert!(v.has_kid(key.kid()));
    assert!(!v.has_kid(other.kid()));
    assert_eq!(v.kids().collect::<Vec<_>>(), vec![key.kid()]);
    let err = v
        .verify(&other.sign(&claims()), NOW)
        .expect_err("unknown key");
    assert_eq!(
        err,
        VerifyError::UnknownKey {
            kid: other.kid().to_owned()
        }
    );
    assert!(!err.is_decode_error());
}

#[test]
fn header_checks() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let payload = serde_json::to_string(&claims()).expect("json");
    let kid = key.kid();
    let cases = [
        (
            r#"{"alg":"none"}"#.to_owned(),
            VerifyError::UnsupportedAlgorithm,
        ),
        (
            format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
            VerifyError::UnsupportedAlgorithm,
        ),
        (
            r#"{"alg":"EdDSA"}"#.to_owned(),
            VerifyError::malformed("header has no kid"),
        ),
        (
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","crit":["b64"]}}"#),
            VerifyError::malformed("header has critical extensions"),
        ),
        (
            format!(r#"{{"alg":"EdDSA","alg":"EdDSA","kid":"{kid}"}}"#),
            VerifyError::malformed("header is not a JSON object with a string alg"),
        ),
        (
            r#"["EdDSA"]"#.to_owned(),
            VerifyError::malformed("header is not a JSON object with a string alg"),
        ),
    ];
    for (header, want) in cases {
        assert_eq!(
            v.verify(&sign_raw(&key, &header, &payload), NOW),
            Err(want),
            "{header}"
        );
    }
    // Unknown header fields are fine.
    let ok = sign_raw(
        &key,
        &format!(r#"{{"alg":"EdDSA","kid":"{kid}","x5u":"?"}}"#),
        &payload,
    );
    assert!(v.verify(&ok, NOW).is_ok());
}

#[test]
fn claims_schema_is_enforced_after_signature() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid());
    for payload in [
        r#"{"sub":"d/1","ten":"t1","iat":1,"exp":2}"#,
        r#"{"sub":"d1","ten":"","iat":1,"exp":2}"#,
        r#"{"sub":"d1","ten":"t1","iat":1}"#,
        r#"{"sub":"d1","ten":"t1","iat":"1","exp":2}"#,
        r#"["d1","t1",null,1,2]"#,
        "not json",
        "",
    ] {
        let err = v
            .verify(&sign_raw(&key, &header, payload), NOW)
            .expect_err(payload);
        assert!(err.is_decode_error(), "{payload}: {err}");
    }
    // Unknown claims are ignored.
    let extra = format!(
        r#"{{"sub":"d1","ten":"t1","iat":{NOW},"exp":{},"aud":"x","n":[1]}}"#,
        NOW + 60
    );
    assert_eq!(
        v.verify(&sign_raw(&key, &header, &extra), NOW)
            .expect("ok")
            .sub,
        device("d1")
    );
}

#[test]
fn expiry_respects_leeway() {
    let key = SigningKey::generate();
    let token = key.sign(&claims());
    let exp = NOW + 300;
    // Fresh verifiers so each case takes the uncached path.
    assert!(verifier(&key).verify(&token, exp).is_ok());
    assert!(verifier(&key).verify(&token, exp + 10).is_ok());
    assert_eq!(
        verifier(&key).verify(&token, exp + 11),
        Err(VerifyError::Expired)
    );
    assert!(verifier(&key).verify(&token, NOW - 10).is_ok());
    assert_eq!(
        verifier(&key).verify(&token, NOW - 11),
        Err(VerifyError::NotYetValid)
    );

    let strict = Verifier::new(
        &key.jwks(),
        VerifierConfig {
            leeway_secs: 0,
            ..VerifierConfig::default()
        },
    );
    assert_eq!(strict.verify(&token, exp + 1), Err(VerifyError::Expired));
    // An expired token is not cached.
    assert_eq!(strict.cached_tokens(), 0);
}

#[test]
fn extreme_times_do_not_overflow() {
    let key = SigningKey::generate();
    let v = Verifier::new(
        &key.jwks(),
        VerifierConfig {
            leeway_secs: u64::MAX,
            ..VerifierConfig::default()
        },
    );
    let c = Claims {
        iat: i64::MIN,
        exp: i64::MAX,
        ..claims()
    };
    assert!(v.verify(&key.sign(&c), i64::MAX).is_ok());
    assert!(v.verify(&key.sign(&c), i64::MIN).is_ok());
}

#[test]
fn check_matches_tenant_and_device() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let token = key.sign(&claims());
    assert!(v.check(&token, &tenant("t1"), &device("d1"), NOW).is_ok());
    assert_eq!(
        v.check(&token, &tenant("t2"), &device("d1"), NOW),
        Err(VerifyError::WrongTenant)
    );
    assert_eq!(
        v.check(&token, &tenant("t1"), &device("d2"), NOW),
        Err(VerifyError::WrongDevice)
    );
    let err = v
        .check(&token, &tenant("t1"), &device("d1"), NOW + 1000)
        .expect_err("expired");
    assert_eq!(err, VerifyError::Expired);
    assert!(!err.is_decode_error());
}

#[test]
fn via_round_trips_and_is_omitted_when_absent() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let with_via = Claims::new(tenant("t1"), device("d1"), Some(device("gw-1")), NOW, 60);
    let got = v.verify(&key.sign(&with_via), NOW).expect("valid");
    assert_eq!(got.via, Some(device("gw-1")));
    assert_eq!(*got, with_via);

    assert!(!serde_json::to_string(&claims())
        .expect("json")
        .contains("via"));
    assert!(serde_json::to_string(&with_via)
        .expect("json")
        .contains(r#""via":"gw-1""#));
}

#[test]
fn jwks_json_shape() {
    let key = SigningKey::generate();
    let json = serde_json::to_value(key.jwks()).expect("json");
    let x = URL_SAFE_NO_PAD.encode(key.key.verifying_key().to_bytes());
    assert_eq!(
        json,
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": key.kid(), "x": x,
        }]})
    );
    let back: Jwks = serde_json::from_value(json).expect("parses back");
    assert_eq!(back, key.jwks());
}

#[test]
fn foreign_keys_in_jwks_are_skipped() {
    let key = SigningKey::generate();
    let mut published = serde_json::to_value(key.jwks()).expect("json");
    let foreign = serde_json::json!([
        {"kty": "RSA", "kid": "rsa-1", "n": "AQAB", "e": "AQAB", "alg": "RS256"},
        {"kty": "OKP", "crv": "X25519", "kid": "x-1", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
        {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
        {"kty": 5},
        "not a key",
    ]);
    let keys = published["keys"].as_array_mut().expect("array");
    keys.splice(0..0, foreign.as_array().expect("array").iter().cloned());
    let jwks: Jwks = serde_json::from_value(published).expect("lenient parse");
    // The string and the numeric kty cannot be JWKs at all; the rest parse and are skipped later.
    assert_eq!(jwks.keys.len(), 6);

    let v = Verifier::new(&jwks, VerifierConfig::default());
    assert_eq!(v.kids().collect::<Vec<_>>(), vec![key.kid()]);
    assert!(v.verify(&key.sign(&claims()), NOW).is_ok());

    let empty = Verifier::new(&Jwks::default(), VerifierConfig::default());
    assert!(matches!(
        empty.verify(&key.sign(&claims()), NOW),
        Err(VerifyError::UnknownKey { .. })
    ));
    assert!(serde_json::from_str::<Jwks>(r#"{"keys": 3}"#).is_err());
}

#[test]
fn load_or_generate_persists_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dir/signing.key");
    let first = SigningKey::load_or_generate(&path).expect("generates");
    let text = std::fs::read_to_string(&path).expect("written");
    assert!(
        text.starts_with("ed25519:") && text.ends_with('\n'),
        "{text}"
    );
    assert_eq!(text.trim().len(), "ed25519:".len() + 43);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("signing.key")]);

    let second = SigningKey::load_or_generate(&path).expect("loads");
    assert_eq!(first.kid(), second.kid());
    let token = first.sign(&claims());
    assert!(verifier(&second).verify(&token, NOW).is_ok());
    assert!(verifier(&first)
        .verify(&second.sign(&claims()), NOW)
        .is_ok());
}

#[test]
fn corrupt_key_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("signing.key");
    let long = "x".repeat(5000);
    let contents: [&[u8]; 6] = [
        b"",
        b"ed25519:",
        b"rsa:AAAA",
        b"ed25519:!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        b"\xff\xfe\x00",
        long.as_bytes(),
    ];
    for c in contents {
        std::fs::write(&path, c).expect("write");
        let err = SigningKey::load_or_generate(&path).expect_err("corrupt");
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        // The corrupt file is left alone for a human to look at.
        assert_eq!(std::fs::read(&path).expect("still there"), c);
    }
    // A directory where the file should be is an I/O error, not a panic.
    let err = SigningKey::load_or_generate(dir.path()).expect_err("is a dir");
    assert!(
        err.to_string().contains(&*dir.path().to_string_lossy()),
        "{err}"
    );
}

/// xorshift64*: deterministic so a failure reproduces, and no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn arbitrary_input_never_panics() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let valid = key.sign(&claims());
    let valid_parts = parts(&valid);
    let alphabet =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_...=+/{}\" \xff\x00";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let mut inputs: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        format!("{valid}."),
        format!(".{valid}"),
        format!("{}..{}", valid_parts[0], valid_parts[2]),
        "A".repeat(MAX_TOKEN_LEN + 1),
        format!("{}.{}", valid_parts[0], "A".repeat(10 * MAX_TOKEN_LEN)),
    ];
    for _ in 0..3000 {
        let s = match rng.below(4) {
            // Random bytes, made into a string the way a lenient AMQP decoder might.
            0 => {
                let len = rng.below(300);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Strings from a token-like alphabet, so dots and base64 come up often.
            1 => {
                let len = rng.below(400);
                let bytes: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // A valid token with a few characters replaced.
            2 => {
                let mut bytes = valid.clone().into_bytes();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] = alphabet[rng.below(alphabet.len())];
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // A valid token cut short or with a random part swapped for random base64 of random JSON.
            _ => {
                if rng.below(2) == 0 {
                    let cut = rng.below(valid.len());
                    valid[..cut].to_owned()
                } else {
                    let mut p = valid_parts.clone();
                    let junk = [
                        "{}",
                        "[]",
                        "null",
                        "{\"alg\":1}",
                        "{\"alg\":\"EdDSA\",\"kid\":7}",
                        "\u{0}",
                    ];
                    let which = rng.below(3);
                    p[which] = URL_SAFE_NO_PAD.encode(junk[rng.below(junk.len())]);
                    p.join(".")
                }
            }
        };
        inputs.push(s);
    }

    for input in &inputs {
        let result = v.verify(input, NOW);
        if *input == valid {
            assert!(result.is_ok());
            continue;
        }
        match result {
            Ok(c) => panic!("accepted {input:?} as {c:?}"),
            Err(VerifyError::WrongTenant | VerifyError::WrongDevice) => {
                panic!("verify() never checks tenant or device")
            }
            Err(
                VerifyError::Malformed(_)
                | VerifyError::UnknownKey { .. }
                | VerifyError::UnsupportedAlgorithm
                | VerifyError::BadSignature
                | VerifyError::Expired
                | VerifyError::NotYetValid,
            ) => {}
        }
        assert!(v.check(input, &tenant("t1"), &device("d1"), NOW).is_err());
    }
    assert_eq!(v.cached_tokens(), 1, "only the valid token is cached");
}

#[test]
fn oversized_tokens_are_malformed_before_decoding() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let huge = format!(
        "{}.{}.{}",
        "A".repeat(3000),
        "A".repeat(3000),
        "A".repeat(86)
    );
    assert!(matches!(
        v.verify(&huge, NOW),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn cache_hit_returns_same_arc_and_still_expires() {
    let key = SigningKey::generate();
    let v = verifier(&key);
    let token = key.sign(&claims());
    let first = v.verify(&token, NOW).expect("valid");
    let second = v.verify(&token, NOW + 1).expect("cached");
    assert!(Arc::ptr_eq(&first, &second));
    let third = v
        .check(&token, &tenant("t1"), &device("d1"), NOW + 2)
        .expect("cached");
    assert!(Arc::ptr_eq(&first, &third));
    assert_eq!(v.cached_tokens(), 1);

    // After exp + leeway the cached entry must not keep the token alive.
    let later = NOW + 300 + 11;
    assert_eq!(v.verify(&token, later), Err(VerifyError::Expired));
    assert_eq!(v.verify(&token, later), Err(VerifyError::Expired));
    assert_eq!(v.cached_tokens(), 0);
}

#[test]
fn cache_stays_bounded() {
    let key = SigningKey::generate();
    let v = Verifier::new(
        &key.jwks(),
        VerifierConfig {
            cache_capacity: 50,
            ..VerifierConfig::default()
        },
    );
    for i in 0..500 {
        let c = Claims::new(tenant("t1"), device(&format!("d{i}")), None, NOW, 60);
        assert!(v.verify(&key.sign(&c), NOW).is_ok());
    }
    assert!(v.cached_tokens() <= 60, "{}", v.cached_tokens());

    // A zero-capacity cache just never hits.
    let none = Verifier::new(
        &key.jwks(),
        VerifierConfig {
            cache_capacity: 0,
            ..VerifierConfig::default()
        },
    );
    let token = key.sign(&claims());
    assert!(none.verify(&token, NOW).is_ok());
    assert!(none.verify(&token, NOW).is_ok());
}

#[test]
fn verifier_config_defaults_and_parses() {
    assert_eq!(
        VerifierConfig::default(),
        VerifierConfig {
            leeway_secs: 10,
            cache_capacity: 100_000
        }
    );
    let c: VerifierConfig = serde_json::from_str(r#"{"leeway_secs": 3}"#).expect("parses");
    assert_eq!(c.leeway_secs, 3);
    assert_eq!(c.cache_capacity, 100_000);
    assert!(serde_json::from_str::<VerifierConfig>(r#"{"leeway": 3}"#).is_err());
}
