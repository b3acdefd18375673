//! AWS Signature Version 4 for S3 requests, with the payload's hash signed.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub struct Signing<'a> {
    pub method: &'a str,
    /// Already URI-encoded, as sent.
    pub path: &'a str,
    pub host: &'a str,
    /// Further headers to sign, lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub unix_seconds: u64,
    pub region: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
}

/// The headers to add to the request: `x-amz-date`, `x-amz-content-sha256`, `authorization`.
pub fn sign(s: &Signing) -> Vec<(String, String)> {
    let stamp = timestamp(s.unix_seconds);
    let date = &stamp[..8];
    let payload_hash = hex(&Sha256::digest(s.body));
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), s.host.into()),
        ("x-amz-content-sha256".into(), payload_hash.clone()),
        ("x-amz-date".into(), stamp.clone()),
    ];
    headers.extend(
        s.headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.trim().to_string())),
    );
    headers.sort();
    let signed_headers: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed_headers = signed_headers.join(";");
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        s.method, s.path
    );
    let scope = format!("{date}/{}/s3/aws4_request", s.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", s.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [s.region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    vec![
        ("x-amz-date".into(), stamp),
        ("x-amz-content-sha256".into(), payload_hash),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                s.access_key_id
            ),
        ),
    ]
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
fn timestamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Percent-encodes all but RFC 3986's unreserved characters (and `/` when `keep_slash`).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_time() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(1_369_353_600), "20130524T000000Z");
        assert_eq!(timestamp(951_782_400 + 3_661), "20000229T010101Z");
    }

    /// The example "GET Object" request of AWS's Signature Version 4 documentation
    /// (Authenticating Requests: Using the Authorization Header, example credentials).
    #[test]
    fn the_documented_example_signs_to_the_documented_signature() {
        let headers = sign(&Signing {
            method: "GET",
            path: "/test.txt",
            host: "examplebucket.s3.amazonaws.com",
            headers: &[("range", "bytes=0-9")],
            body: b"",
            unix_seconds: 1_369_353_600,
            region: "us-east-1",
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        });
        let authorization = &headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn keys_are_percent_encoded_except_unreserved_characters() {
        assert_eq!(uri_encode("a b/c~d+e", true), "a%20b/c~d%2Be");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
