//! JWT verification: signed access tokens carrying topic grants.
//!
//! Contract: [`Verifier::verify`] takes the compact token and the current Unix time (an
//! input, so expiry is tested on a virtual clock) and returns the token's [`Claims`] or why
//! it is refused. Accepted signatures: HS256/384/512 with the shared secret
//! (`--jwt-secret`/`--jwt-secret-file`); RS256/384/512 and PS256/384/512 with an RSA public key,
//! ES256/ES384 with an EC public key (`--jwt-public-key FILE`, PEM, repeatable for key
//! rotation: every key of the token's family is tried). The token's `alg` must match a
//! configured key's family (no `none`, no HMAC keyed with a public key). Required claim:
//! `exp` (integer seconds; at or after it the token is expired). Optional: `nbf` (not valid
//! before), `iss`/`aud` (checked when `--jwt-issuer`/`--jwt-audience` are set), and the grants
//! `subscribe` / `publish`: arrays of topic globs. No leeway: clocks are compared as they are.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::grants::Grants;

/// The claims shardcast reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// What the token allows.
    pub grants: Grants,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// `exp` has passed.
    Expired,
    /// Anything else: malformed, bad signature, unaccepted algorithm, `nbf` in the future,
    /// wrong issuer or audience, no `exp`.
    Invalid(String),
}

#[derive(Deserialize)]
struct RawClaims {
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Which algorithms a key verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
}

fn family(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Some(Family::Hmac),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        _ => None,
    }
}

/// Configured keys and claim checks.
pub struct Verifier {
    keys: Vec<(Family, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "keys",
                &self.keys.iter().map(|(f, _)| f).collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    /// A verifier with the HMAC `secret` (if any) and the PEM public keys in `key_files`;
    /// `None` when neither is configured.
    pub fn new(
        secret: Option<&[u8]>,
        key_files: &[impl AsRef<Path>],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Option<Verifier>, String> {
        let mut keys = Vec::new();
        if let Some(s) = secret {
            if s.is_empty() {
                return Err("the JWT secret is empty".to_owned());
            }
            keys.push((Family::Hmac, DecodingKey::from_secret(s)));
        }
        for path in key_files {
            let path = path.as_ref();
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read JWT public key {}: {e}", path.display()))?;
            keys.push(parse_public_key(&pem).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Verifier {
            keys,
            issuer,
            audience,
        }))
    }

    /// Verify `token` at Unix time `now` (seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let invalid = |e: &dyn std::fmt::Display| TokenError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        let fam = family(header.alg).ok_or_else(|| {
            TokenError::Invalid(format!("algorithm {:?} not accepted", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        // Times are checked below against `now` (an input), not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let mut last = None;
        for (_, key) in self.keys.iter().filter(|(f, _)| *f == fam) {
            match jsonwebtoken::decode::<RawClaims>(token, key, &validation) {
                Ok(data) => return check_times(data.claims, now),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => invalid(&e),
            None => TokenError::Invalid(format!("no key configured for {:?}", header.alg)),
        })
    }
}

fn check_times(raw: RawClaims, now: u64) -> Result<Claims, TokenError> {
    let exp = raw
        .exp
        .ok_or_else(|| TokenError::Invalid("token has no exp claim".to_owned()))?;
    if now >= exp {
        return Err(TokenError::Expired);
    }
    if raw.nbf.is_some_and(|nbf| now < nbf) {
        return Err(TokenError::Invalid("token not valid yet (nbf)".to_owned()));
    }
    Ok(Claims {
        exp,
        grants: Grants::new(raw.subscribe, raw.publish),
    })
}

fn parse_public_key(pem: &[u8]) -> Result<(Family, DecodingKey), String> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Family::Rsa, k));
    }
    DecodingKey::from_ec_pem(pem)
        .map(|k| (Family::Ec, k))
        .map_err(|_| "not an RSA or EC public key in PEM".to_owned())
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Unix time now, in milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    pub(crate) fn keys_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
    }

    /// Sign `claims` with `alg` using the test keys (HS* with `secret`).
    pub(crate) fn sign(alg: Algorithm, claims: &serde_json::Value, secret: &[u8]) -> String {
        let key = match family(alg).unwrap() {
            Family::Hmac => EncodingKey::from_secret(secret),
            Family::Rsa => {
                EncodingKey::from_rsa_pem(&std::fs::read(keys_dir().join("rs256.key")).unwrap())
                    .unwrap()
            }
            Family::Ec => {
                EncodingKey::from_ec_pem(&std::fs::read(keys_dir().join("es256.key")).unwrap())
                    .unwrap()
            }
        };
        encode(&Header::new(alg), claims, &key).unwrap()
    }

    fn all_keys() -> Verifier {
        let files = [keys_dir().join("rs256.pub"), keys_dir().join("es256.pub")];
        Verifier::new(Some(b"s3cret"), &files, None, None)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn every_family_verifies_and_grants_come_through() {
        let v = all_keys();
        let claims = json!({"exp": 2000, "subscribe": ["ticker.*"], "publish": ["chat.1"]});
        for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
            let c = v.verify(&sign(alg, &claims, b"s3cret"), 1000).unwrap();
            assert_eq!(c.exp, 2000, "{alg:?}");
            assert!(c.grants.may_subscribe("ticker.btc") && c.grants.may_publish("chat.1"));
            assert!(!c.grants.may_publish("ticker.btc"));
        }
    }

    #[test]
    fn expiry_and_nbf_on_a_virtual_clock() {
        let v = all_keys();
        let t = sign(Algorithm::HS256, &json!({"exp": 100, "nbf": 50}), b"s3cret");
        assert!(matches!(v.verify(&t, 49), Err(TokenError::Invalid(m)) if m.contains("nbf")));
        assert!(v.verify(&t, 50).is_ok());
        assert!(v.verify(&t, 99).is_ok());
        assert_eq!(v.verify(&t, 100), Err(TokenError::Expired));
        assert_eq!(v.verify(&t, 10_000), Err(TokenError::Expired));
        let no_exp = sign(Algorithm::HS256, &json!({"subscribe": ["*"]}), b"s3cret");
        assert!(matches!(v.verify(&no_exp, 1), Err(TokenError::Invalid(m)) if m.contains("exp")));
    }

    #[test]
    fn forgeries_are_refused() {
        let v = all_keys();
        let claims = json!({"exp": 2000, "publish": ["*"]});
        let wrong_secret = sign(Algorithm::HS256, &claims, b"guess");
        assert!(matches!(
            v.verify(&wrong_secret, 1),
            Err(TokenError::Invalid(_))
        ));
        // Tampered payload: same signature, other claims.
        let good = sign(Algorithm::ES256, &claims, b"");
        let parts: Vec<&str> = good.split('.').collect();
        let other = sign(
            Algorithm::ES256,
            &json!({"exp": 9999, "publish": ["*"]}),
            b"",
        );
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(matches!(v.verify(&forged, 1), Err(TokenError::Invalid(_))));
        // alg "none" and garbage.
        let none = format!("{}.{}.", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", parts[1]);
        assert!(matches!(v.verify(&none, 1), Err(TokenError::Invalid(_))));
        assert!(matches!(
            v.verify("not.a.jwt", 1),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(v.verify("", 1), Err(TokenError::Invalid(_))));
        // HMAC-only verifier: RS256 tokens have no key.
        let hs = Verifier::new(Some(b"s3cret"), &[] as &[&str], None, None)
            .unwrap()
            .unwrap();
        let rs = sign(Algorithm::RS256, &claims, b"");
        assert!(matches!(hs.verify(&rs, 1), Err(TokenError::Invalid(m)) if m.contains("no key")));
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = Verifier::new(
            Some(b"k"),
            &[] as &[&str],
            Some("issuer-1".into()),
            Some("shardcast".into()),
        )
        .unwrap()
        .unwrap();
        let ok = json!({"exp": 10, "iss": "issuer-1", "aud": "shardcast"});
        assert!(v.verify(&sign(Algorithm::HS256, &ok, b"k"), 1).is_ok());
        for bad in [
            json!({"exp": 10, "iss": "other", "aud": "shardcast"}),
            json!({"exp": 10, "iss": "issuer-1", "aud": "other"}),
            json!({"exp": 10}),
        ] {
            assert!(
                v.verify(&sign(Algorithm::HS256, &bad, b"k"), 1).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn configuration_errors() {
        assert!(Verifier::new(None, &[] as &[&str], None, None)
            .unwrap()
            .is_none());
        assert!(Verifier::new(Some(b""), &[] as &[&str], None, None).is_err());
        assert!(Verifier::new(None, &["/nonexistent/key.pem"], None, None).is_err());
        let not_a_key = keys_dir().join("README.md");
        assert!(Verifier::new(None, &[not_a_key], None, None).is_err());
        assert!(unix_now() > 1_700_000_000);
    }
}
