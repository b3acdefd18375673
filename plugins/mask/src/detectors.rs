//! The built-in detectors: what each one finds, and the checks that keep look-alikes out.
//!
//! Patterns are ASCII-only regexes (no Unicode classes: `[0-9]`, not `\d`). A pattern with
//! capture groups masks only its first group that took part in the match (the value of
//! `password=value`); a pattern without groups masks the whole match.

/// Checks a candidate beyond its shape: most digit runs are not card numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validator {
    /// Luhn checksum, 13–19 digits, and a known issuer prefix.
    Card,
    /// Luhn checksum alone (custom detectors).
    Luhn,
    /// ISO 7064 mod-97 (IBAN).
    Mod97,
    /// US social security number: area not 000, 666 or 9xx; group not 00; serial not 0000.
    Ssn,
}

impl Validator {
    pub fn from_name(name: &str) -> Option<Validator> {
        match name {
            "luhn" => Some(Validator::Luhn),
            "mod97" => Some(Validator::Mod97),
            _ => None,
        }
    }

    pub fn accepts(self, candidate: &[u8]) -> bool {
        match self {
            Validator::Card => card(candidate),
            Validator::Luhn => luhn(&digits(candidate)),
            Validator::Mod97 => mod97(candidate),
            Validator::Ssn => ssn(candidate),
        }
    }

    /// Whether spaces and dashes inside a value are formatting (so `4242 4242 …` and
    /// `4242-4242-…` are the same value for a pseudonym).
    pub fn strips_separators(self) -> bool {
        matches!(self, Validator::Card | Validator::Luhn | Validator::Mod97)
    }
}

/// What a detector finds, for a policy to enable by kind: `secrets`, `pii`, `payment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Credentials: keys, tokens, passwords.
    Secrets,
    /// What identifies a person.
    Pii,
    /// Card and bank account numbers.
    Payment,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Secrets, Group::Pii, Group::Payment];

    pub fn name(self) -> &'static str {
        match self {
            Group::Secrets => "secrets",
            Group::Pii => "pii",
            Group::Payment => "payment",
        }
    }
}

pub struct Builtin {
    pub name: &'static str,
    pub group: Group,
    /// Patterns in priority order: where two start at the same byte, the first wins.
    pub patterns: &'static [Pattern],
    pub validator: Option<Validator>,
    pub on_by_default: bool,
}

pub struct Pattern {
    pub regex: &'static str,
    /// Opens a block that runs to a closing marker (a PEM private key): when the close is not
    /// in sight yet, everything from the opener on is held, and masked if forced out.
    pub opens_block: bool,
    /// After a match, look for other detectors' values from the start of the masked group
    /// (`password=4242 4242 4242 4242`: the value is a whole card number).
    pub rescans: bool,
}

macro_rules! patterns {
    ($($regex:expr),+ $(,)?) => {
        &[$(Pattern { regex: $regex, opens_block: false, rescans: false }),+]
    };
}

/// Every built-in detector, in priority order.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "pem",
        group: Group::Secrets,
        patterns: &[
            Pattern {
                regex: r"-----BEGIN[ A-Z]*PRIVATE KEY-----(?s:.)*?-----END[ A-Z]*PRIVATE KEY-----",
                opens_block: false,
                rescans: false,
            },
            Pattern {
                regex: r"-----BEGIN[ A-Z]*PRIVATE KEY-----",
                opens_block: true,
                rescans: false,
            },
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        name: "jwt",
        group: Group::Secrets,
        patterns: patterns![r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        name: "aws-key",
        group: Group::Secrets,
        patterns: patterns![
            // Access key ids: a fixed prefix per kind, then 16 base-32 characters.
            r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}\b",
            // Secret keys: 40 base-64 characters, recognised by the name they are given.
            r#"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)["']?[ \t]*[:=][ \t]*["']?([A-Za-z0-9/+]{40})\b"#,
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        name: "github",
        group: Group::Secrets,
        patterns: patterns![r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        name: "slack",
        group: Group::Secrets,
        patterns: patterns![
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
            r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+",
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Stripe secret and restricted keys (live and test) and webhook signing secrets; publishable keys (`pk_`) are public.
        name: "stripe",
        group: Group::Secrets,
        patterns: patterns![
            r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,247}\b",
            r"\bwhsec_[0-9A-Za-z]{32,}\b",
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Google Cloud API keys.
        name: "google-api-key",
        group: Group::Secrets,
        patterns: patterns![r"\bAIza[0-9A-Za-z_-]{35}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // GitLab personal, deploy, runner, trigger, feed and SCIM tokens.
        name: "gitlab",
        group: Group::Secrets,
        patterns: patterns![r"\bgl(?:pat|dt|rt|ptt|ft|soat)-[0-9A-Za-z_-]{20,}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // npm access tokens.
        name: "npm",
        group: Group::Secrets,
        patterns: patterns![r"\bnpm_[A-Za-z0-9]{36}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // PyPI upload tokens (a macaroon for pypi.org).
        name: "pypi",
        group: Group::Secrets,
        patterns: patterns![r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Docker Hub personal access tokens.
        name: "docker-hub",
        group: Group::Secrets,
        patterns: patterns![r"\bdckr_pat_[A-Za-z0-9_-]{27,}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // OpenAI API keys: project, service-account and admin keys, and the older form marked T3BlbkFJ.
        name: "openai",
        group: Group::Secrets,
        patterns: patterns![
            r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}",
            r"\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}\b",
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Anthropic API and admin keys.
        name: "anthropic",
        group: Group::Secrets,
        patterns: patterns![r"\bsk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Hugging Face access tokens.
        name: "huggingface",
        group: Group::Secrets,
        patterns: patterns![r"\bhf_[A-Za-z0-9]{34}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // SendGrid API keys.
        name: "sendgrid",
        group: Group::Secrets,
        patterns: patterns![r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Twilio API key SIDs.
        name: "twilio",
        group: Group::Secrets,
        patterns: patterns![r"\bSK[0-9a-f]{32}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // DigitalOcean personal, OAuth and refresh tokens.
        name: "digitalocean",
        group: Group::Secrets,
        patterns: patterns![r"\bdo[opr]_v1_[a-f0-9]{64}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Shopify access tokens and shared secrets.
        name: "shopify",
        group: Group::Secrets,
        patterns: patterns![r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Square access tokens and OAuth secrets.
        name: "square",
        group: Group::Secrets,
        patterns: patterns![
            r"\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,43}",
            r"\bEAAA[A-Za-z0-9_-]{60}",
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Braintree (PayPal) production access tokens.
        name: "braintree",
        group: Group::Secrets,
        patterns: patterns![r"\baccess_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Azure storage account keys in connection strings (the key).
        name: "azure-storage",
        group: Group::Secrets,
        patterns: patterns![r"AccountKey=([A-Za-z0-9+/]{86}==)",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Alibaba Cloud access key ids.
        name: "alibaba",
        group: Group::Secrets,
        patterns: patterns![r"\bLTAI[A-Za-z0-9]{20}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Databricks personal access tokens.
        name: "databricks",
        group: Group::Secrets,
        patterns: patterns![r"\bdapi[a-f0-9]{32}(?:-[0-9]+)?\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // HashiCorp Vault service and batch tokens.
        name: "vault",
        group: Group::Secrets,
        patterns: patterns![r"\bhv[sb]\.[A-Za-z0-9_-]{24,}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Terraform Cloud / HCP Terraform API tokens.
        name: "terraform",
        group: Group::Secrets,
        patterns: patterns![r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Doppler tokens.
        name: "doppler",
        group: Group::Secrets,
        patterns: patterns![r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Postman API keys.
        name: "postman",
        group: Group::Secrets,
        patterns: patterns![r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Grafana Cloud tokens and service account tokens.
        name: "grafana",
        group: Group::Secrets,
        patterns: patterns![
            r"\bglc_[A-Za-z0-9+/]{32,}={0,2}",
            r"\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b",
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Linear API keys.
        name: "linear",
        group: Group::Secrets,
        patterns: patterns![r"\blin_api_[A-Za-z0-9]{40}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Sentry organization and user auth tokens.
        name: "sentry",
        group: Group::Secrets,
        patterns: patterns![r"\bsntry[su]_[A-Za-z0-9+/=_-]{40,}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Telegram bot tokens (bot id, colon, secret).
        name: "telegram",
        group: Group::Secrets,
        patterns: patterns![r"\b[0-9]{8,10}:AA[0-9A-Za-z_-]{33}",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // age encryption secret keys.
        name: "age",
        group: Group::Secrets,
        patterns: patterns![r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b",],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // user:password@ in a URL: the password.
        name: "url-password",
        group: Group::Secrets,
        patterns: patterns![r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:([^\s@/]+)@"],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // password=…, "secret": "…", TOKEN: … — the value.
        name: "assignment",
        group: Group::Secrets,
        patterns: &[Pattern {
            regex: r#"(?i:passw(?:or)?d|secret|token|api_?key|access_?key|auth_?key|private_?key)(?:[_-][A-Za-z]+)?["']?[ \t]*[:=][ \t]*(?:"([^"\r\n]+)"|'([^'\r\n]+)'|([^\s"',;&<>]+))"#,
            opens_block: false,
            rescans: true,
        }],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        name: "email",
        group: Group::Pii,
        patterns: patterns![
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
        ],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        name: "iban",
        group: Group::Payment,
        patterns: patterns![r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"],
        validator: Some(Validator::Mod97),
        on_by_default: true,
    },
    Builtin {
        // 13–19 digits, in groups separated by single spaces or dashes, or none.
        name: "card",
        group: Group::Payment,
        patterns: patterns![r"\b[0-9](?:[ -]?[0-9]){12,18}\b"],
        validator: Some(Validator::Card),
        on_by_default: true,
    },
    Builtin {
        name: "ssn",
        group: Group::Pii,
        patterns: patterns![r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"],
        validator: Some(Validator::Ssn),
        on_by_default: true,
    },
    Builtin {
        // E.164: a plus, a non-zero country code digit, up to 15 digits in all.
        name: "phone",
        group: Group::Pii,
        patterns: patterns![r"\+[1-9][0-9]{7,14}\b"],
        validator: None,
        on_by_default: true,
    },
    Builtin {
        // Off by default: version strings and OIDs look the same.
        name: "ipv4",
        group: Group::Pii,
        patterns: patterns![
            r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b"
        ],
        validator: None,
        on_by_default: false,
    },
];

/// Closes a block opened by the `pem` opener.
pub const BLOCK_CLOSE: &str = r"-----END[ A-Z]*PRIVATE KEY-----";

pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// What `detectors` may name: `default`, the groups, then each detector.
pub fn names() -> String {
    let groups = Group::ALL.iter().map(|g| g.name());
    let detectors = BUILTINS.iter().map(|b| b.name);
    std::iter::once("default")
        .chain(groups)
        .chain(detectors)
        .collect::<Vec<_>>()
        .join(", ")
}

fn digits(candidate: &[u8]) -> Vec<u8> {
    candidate
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect()
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

fn card(candidate: &[u8]) -> bool {
    let digits = digits(candidate);
    if !(13..=19).contains(&digits.len()) || !luhn(&digits) {
        return false;
    }
    // Mixed separators (`4242-4242 4242`) are not how anyone writes a card number.
    let dashes = candidate.contains(&b'-');
    let spaces = candidate.contains(&b' ');
    if dashes && spaces {
        return false;
    }
    let prefix = |n: usize| {
        digits[..n]
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let length = digits.len();
    ISSUERS.iter().any(|issuer| {
        (issuer.first..=issuer.last).contains(&prefix(issuer.digits))
            && (issuer.lengths.0..=issuer.lengths.1).contains(&length)
    })
}

/// An issuer's number range: its prefixes (`digits` long, `first..=last`) and the lengths
/// its card numbers have. A Luhn-valid number outside every range (a 15-digit number
/// starting with 4: no Visa card has 15 digits, many device identifiers do) is not a card.
struct Issuer {
    digits: usize,
    first: u32,
    last: u32,
    lengths: (usize, usize),
}

const fn issuer(digits: usize, first: u32, last: u32, lengths: (usize, usize)) -> Issuer {
    Issuer {
        digits,
        first,
        last,
        lengths,
    }
}

const ISSUERS: &[Issuer] = &[
    // Visa: 13 and 16 digits (19 for some debit cards); 4 alone is too wide for the others.
    issuer(1, 4, 4, (13, 13)),
    issuer(1, 4, 4, (16, 16)),
    issuer(1, 4, 4, (19, 19)),
    issuer(2, 51, 55, (16, 16)),     // Mastercard
    issuer(4, 2221, 2720, (16, 16)), // Mastercard 2-series
    issuer(2, 34, 34, (15, 15)),     // American Express
    issuer(2, 37, 37, (15, 15)),
    issuer(4, 6011, 6011, (16, 19)), // Discover
    issuer(3, 644, 649, (16, 19)),
    issuer(2, 65, 65, (16, 19)),
    issuer(2, 62, 62, (16, 19)),     // UnionPay
    issuer(4, 3528, 3589, (16, 19)), // JCB
    issuer(3, 300, 305, (14, 19)),   // Diners Club
    issuer(2, 36, 36, (14, 19)),
    issuer(2, 38, 39, (16, 19)),
    issuer(4, 2200, 2204, (16, 19)), // Mir
    issuer(2, 50, 50, (13, 19)),     // Maestro (12-digit numbers are below the detector's floor)
    issuer(2, 56, 58, (13, 19)),
    issuer(2, 67, 67, (13, 19)),
];

fn mod97(candidate: &[u8]) -> bool {
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // Move the country code and check digits to the end; letters count as 10..35.
    let (head, tail) = compact.split_at(4);
    let mut remainder = 0u32;
    for &b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        let width = if value >= 10 { 100 } else { 10 };
        remainder = (remainder * width + value) % 97;
    }
    remainder == 1
}

fn ssn(candidate: &[u8]) -> bool {
    let d = digits(candidate);
    if d.len() != 9 {
        return false;
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = d[3] * 10 + d[4];
    let serial = d[5..].iter().all(|&x| x == 0);
    area != 0 && area != 666 && area < 900 && group != 0 && !serial
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_one_digit_off() {
        assert!(Validator::Card.accepts(b"4242 4242 4242 4242"));
        assert!(Validator::Card.accepts(b"378282246310005"));
        assert!(!Validator::Card.accepts(b"4242 4242 4242 4241"));
        assert!(!Validator::Card.accepts(b"4242-4242 4242-4242"));
    }

    #[test]
    fn a_card_needs_a_length_its_issuer_uses() {
        // Luhn-valid, starting with 4, but 15 digits: no Visa card is; IMEIs are.
        let imei = b"490154203237518";
        assert!(luhn(&digits(imei)));
        assert!(!Validator::Card.accepts(imei));
        // Amex is 15 digits, never 16; Mastercard 16, never 15.
        assert!(Validator::Card.accepts(b"3782 822463 10005"));
        assert!(!Validator::Card.accepts(b"3782822463100052"));
        assert!(Validator::Card.accepts(b"5555 5555 5555 4444"));
        assert!(!Validator::Card.accepts(b"555555555555442"));
        // Visa in its three lengths.
        assert!(Validator::Card.accepts(b"4222222222222"));
        assert!(Validator::Card.accepts(b"4111 1111 1111 1111"));
        assert!(Validator::Card.accepts(b"4111111111111111110"));
        assert!(Validator::Card.accepts(b"2200 0000 0000 0004"), "Mir");
    }

    #[test]
    fn iban_needs_its_check_digits() {
        assert!(Validator::Mod97.accepts(b"GB82 WEST 1234 5698 7654 32"));
        assert!(Validator::Mod97.accepts(b"DE89370400440532013000"));
        assert!(!Validator::Mod97.accepts(b"DE89370400440532013001"));
    }

    #[test]
    fn ssn_invalid_ranges_are_refused() {
        assert!(Validator::Ssn.accepts(b"123-45-6789"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-34-5678",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!Validator::Ssn.accepts(bad.as_bytes()), "{bad}");
        }
    }
}
