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
    /// Luhn checksum alone (custom detectors, Canadian SIN).
    Luhn,
    /// ISO 7064 mod-97 (IBAN).
    Mod97,
    /// US social security number: area not 000, 666 or 9xx; group not 00; serial not 0000.
    Ssn,
    /// Random-looking: Shannon entropy of at least this many tenths of a bit per character,
    /// with letters and digits both present (`8fK2pQ...`, not `created_at_desc`), and not a
    /// path, call or placeholder (as [`Validator::Literal`]).
    Entropy(u8),
    /// 8–15 digits (E.164's bounds), brackets balanced.
    Phone,
    /// Italian codice fiscale: its check letter.
    CodiceFiscale,
    /// French NIR (INSEE number): its two-digit key.
    Nir,
    /// Brazilian CPF: its two check digits.
    Cpf,
    /// UK National Insurance number: the prefixes never issued.
    Nino,
    /// Dutch BSN: the eleven test.
    Bsn,
    /// German tax id (Steuer-IdNr): ISO 7064 MOD 11,10.
    SteuerId,
    /// Spanish DNI and NIE: the check letter.
    Dni,
    /// Indian Aadhaar: the Verhoeff check digit.
    Verhoeff,
    /// A value given to a secret's name that is not a secret itself: a path, a call, a
    /// placeholder, a reference to another variable (`tokens.next()`, `/etc/ssl/x.key`,
    /// `${DB_PASSWORD}`, `None`).
    Literal,
}

impl Validator {
    /// A policy's name for it: `luhn`, `mod97`, `entropy` (3.5 bits) or `entropy>=N`.
    pub fn from_name(name: &str) -> Option<Validator> {
        match name {
            "luhn" => Some(Validator::Luhn),
            "mod97" => Some(Validator::Mod97),
            "entropy" => Some(Validator::Entropy(35)),
            _ => {
                let bits: f64 = name.strip_prefix("entropy>=")?.trim().parse().ok()?;
                (0.0..=8.0)
                    .contains(&bits)
                    .then(|| Validator::Entropy((bits * 10.0).round() as u8))
            }
        }
    }

    pub fn accepts(self, candidate: &[u8]) -> bool {
        match self {
            Validator::Card => card(candidate),
            Validator::Luhn => luhn(&digits(candidate)),
            Validator::Mod97 => mod97(candidate),
            Validator::Ssn => ssn(candidate),
            Validator::Entropy(tenths) => {
                literal_value(candidate) && random_looking(candidate, f64::from(tenths) / 10.0)
            }
            Validator::Phone => phone(candidate),
            Validator::CodiceFiscale => codice_fiscale(candidate),
            Validator::Nir => nir(candidate),
            Validator::Cpf => cpf(&digits(candidate)),
            Validator::Nino => nino(candidate),
            Validator::Bsn => bsn(&digits(candidate)),
            Validator::SteuerId => steuer_id(&digits(candidate)),
            Validator::Dni => dni(candidate),
            Validator::Verhoeff => verhoeff(&digits(candidate)),
            Validator::Literal => literal_value(candidate),
        }
    }

    /// Why `candidate` was refused, for `--explain`.
    pub fn refusal(self, candidate: &[u8]) -> &'static str {
        match self {
            Validator::Card => card_refusal(candidate).unwrap_or("accepted"),
            Validator::Luhn => "the Luhn check fails",
            Validator::Mod97 => "the mod-97 check digits are wrong",
            Validator::Ssn => "an area, group or serial number never issued",
            Validator::Entropy(_) => {
                "too regular to be a secret (entropy below the threshold, or not both letters and digits)"
            }
            Validator::Phone => "not 8 to 15 digits, or unbalanced brackets",
            Validator::Nino => "a prefix never issued",
            Validator::Bsn => "the eleven test fails",
            Validator::CodiceFiscale | Validator::Dni => "the check letter is wrong",
            Validator::Nir | Validator::Cpf | Validator::SteuerId | Validator::Verhoeff => {
                "the check digits are wrong"
            }
            Validator::Literal => "a path, call, placeholder or reference, not a value",
        }
    }

    /// Whether spaces, dashes and dots inside a value are formatting (so `4242 4242 …` and
    /// `4242-4242-…` are the same value for a pseudonym).
    pub fn strips_separators(self) -> bool {
        !matches!(self, Validator::Entropy(_) | Validator::Literal)
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
    /// Literals (exact case) one of which every value contains or has within [`crate::NEAR`]
    /// bytes: the detector runs only where one appears. `keywords` and `words` both empty:
    /// it runs everywhere, in the combined pass (formats with no literal: cards, e-mail).
    pub keywords: &'static [&'static str],
    /// The same, in any case (`password`, `ssn`): words that confirm a value.
    pub words: &'static [&'static str],
    /// Whether `words` count only standing alone (`SIN:`, not the `sin` in `using`), or
    /// inside longer names too (the `passw` in `DB_PASSWORD`).
    pub words_alone: bool,
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

/// A provider's token: a secret, on by default, found where one of its literals appears.
const fn token(
    name: &'static str,
    keywords: &'static [&'static str],
    patterns: &'static [Pattern],
) -> Builtin {
    Builtin {
        name,
        group: Group::Secrets,
        patterns,
        validator: None,
        on_by_default: true,
        keywords,
        words: &[],
        words_alone: false,
    }
}

/// A value only its context tells apart (`[0-9a-f]{32}` is a Fastly token only near the word
/// `fastly`).
const fn named(
    name: &'static str,
    group: Group,
    words: &'static [&'static str],
    patterns: &'static [Pattern],
    validator: Option<Validator>,
) -> Builtin {
    Builtin {
        name,
        group,
        patterns,
        validator,
        on_by_default: true,
        keywords: &[],
        words,
        words_alone: true,
    }
}

/// A format distinctive enough to look for everywhere, in the combined pass.
const fn everywhere(
    name: &'static str,
    group: Group,
    patterns: &'static [Pattern],
    validator: Option<Validator>,
) -> Builtin {
    Builtin {
        name,
        group,
        patterns,
        validator,
        on_by_default: true,
        keywords: &[],
        words: &[],
        words_alone: false,
    }
}

const UUID: &str =
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b";

/// Every built-in detector, in priority order.
pub const BUILTINS: &[Builtin] = &[
    everywhere(
        "pem",
        Group::Secrets,
        &[
            Pattern {
                regex: r"-----BEGIN[ A-Z]*PRIVATE KEY(?: BLOCK)?-----(?s:.)*?-----END[ A-Z]*PRIVATE KEY(?: BLOCK)?-----",
                opens_block: false,
                rescans: false,
            },
            Pattern {
                regex: r"-----BEGIN[ A-Z]*PRIVATE KEY(?: BLOCK)?-----",
                opens_block: true,
                rescans: false,
            },
        ],
        None,
    ),
    everywhere(
        "jwt",
        Group::Secrets,
        patterns![r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"],
        None,
    ),
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
        keywords: &[
            "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "APKA",
        ],
        words: &["secret"],
        words_alone: false,
    },
    token(
        "github",
        &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        patterns![r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"],
    ),
    token(
        "slack",
        &[
            "xoxa-",
            "xoxb-",
            "xoxp-",
            "xoxo-",
            "xoxs-",
            "xoxr-",
            "xoxe",
            "xapp-",
            "hooks.slack.com",
        ],
        patterns![
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
            r"\bxoxe(?:\.xox[bp])?-[0-9]-[A-Za-z0-9]{40,}",
            r"\bxapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-z0-9]{32,}",
            r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+",
        ],
    ),
    // Stripe secret and restricted keys (live and test) and webhook signing secrets;
    // publishable keys (`pk_`) are public.
    token(
        "stripe",
        &["sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"],
        patterns![
            r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,247}\b",
            r"\bwhsec_[0-9A-Za-z]{32,}\b",
        ],
    ),
    // Google Cloud API keys; OAuth client secrets and access tokens.
    token(
        "google-api-key",
        &["AIza"],
        patterns![r"\bAIza[0-9A-Za-z_-]{35}"],
    ),
    token(
        "google-oauth",
        &["GOCSPX-", "ya29."],
        patterns![
            r"\bGOCSPX-[A-Za-z0-9_-]{28}\b",
            r"\bya29\.[A-Za-z0-9_-]{30,}"
        ],
    ),
    // GitLab personal, deploy, runner, trigger, feed and SCIM tokens, runner registration.
    token(
        "gitlab",
        &[
            "glpat-",
            "gldt-",
            "glrt-",
            "glptt-",
            "glft-",
            "glsoat-",
            "glcbt-",
            "glimt-",
            "gloas-",
            "glagent-",
            "glffct-",
            "GR1348941",
        ],
        patterns![
            r"\bgl(?:pat|dt|rt|ptt|ft|soat|cbt|imt|oas|agent|ffct)-[0-9A-Za-z_-]{20,}",
            r"\bGR1348941[A-Za-z0-9_-]{20}\b",
        ],
    ),
    token("npm", &["npm_"], patterns![r"\bnpm_[A-Za-z0-9]{36}\b"]),
    // PyPI upload tokens (a macaroon for pypi.org).
    token(
        "pypi",
        &["pypi-AgEIcHlwaS5vcmc"],
        patterns![r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"],
    ),
    token(
        "rubygems",
        &["rubygems_"],
        patterns![r"\brubygems_[a-f0-9]{48}\b"],
    ),
    token("nuget", &["oy2"], patterns![r"\boy2[a-z0-9]{43}\b"]),
    token(
        "clojars",
        &["CLOJARS_"],
        patterns![r"\bCLOJARS_[a-z0-9]{60}\b"],
    ),
    token(
        "docker-hub",
        &["dckr_pat_"],
        patterns![r"\bdckr_pat_[A-Za-z0-9_-]{27,}"],
    ),
    // JFrog Artifactory API keys and reference tokens.
    token(
        "jfrog",
        &["AKCp", "cmVmdGtu"],
        patterns![
            r"\bAKCp[A-Za-z0-9]{69}\b",
            r"\bcmVmdGtuOjAxOj[A-Za-z0-9]{40,}"
        ],
    ),
    // OpenAI API keys: project, service-account and admin keys, and the older form marked T3BlbkFJ.
    token(
        "openai",
        &["sk-proj-", "sk-svcacct-", "sk-admin-", "T3BlbkFJ"],
        patterns![
            r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}",
            r"\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}\b",
        ],
    ),
    token(
        "anthropic",
        &["sk-ant-"],
        patterns![r"\bsk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,}"],
    ),
    token(
        "huggingface",
        &["hf_"],
        patterns![r"\bhf_[A-Za-z0-9]{34}\b"],
    ),
    token("groq", &["gsk_"], patterns![r"\bgsk_[A-Za-z0-9]{52}\b"]),
    token(
        "perplexity",
        &["pplx-"],
        patterns![r"\bpplx-[A-Za-z0-9]{48}\b"],
    ),
    token("replicate", &["r8_"], patterns![r"\br8_[A-Za-z0-9]{37}\b"]),
    token("xai", &["xai-"], patterns![r"\bxai-[A-Za-z0-9]{80}\b"]),
    token(
        "sendgrid",
        &["SG."],
        patterns![r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"],
    ),
    // Brevo (Sendinblue) API and SMTP keys.
    token(
        "brevo",
        &["xkeysib-", "xsmtpsib-"],
        patterns![r"\bx(?:keysib|smtpsib)-[a-f0-9]{64}-[A-Za-z0-9]{16}\b"],
    ),
    token("mailgun", &["key-"], patterns![r"\bkey-[0-9a-f]{32}\b"]),
    token(
        "mailchimp",
        &["-us"],
        patterns![r"\b[0-9a-f]{32}-us[0-9]{1,2}\b"],
    ),
    // Twilio API key SIDs.
    token("twilio", &["SK"], patterns![r"\bSK[0-9a-f]{32}\b"]),
    // DigitalOcean personal, OAuth and refresh tokens.
    token(
        "digitalocean",
        &["dop_v1_", "doo_v1_", "dor_v1_"],
        patterns![r"\bdo[opr]_v1_[a-f0-9]{64}\b"],
    ),
    // Shopify access tokens and shared secrets.
    token(
        "shopify",
        &["shpat_", "shpca_", "shppa_", "shpss_"],
        patterns![r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b"],
    ),
    // Square access tokens and OAuth secrets.
    token(
        "square",
        &["sq0atp-", "sq0csp-", "EAAA"],
        patterns![
            r"\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,43}",
            r"\bEAAA[A-Za-z0-9_-]{60}"
        ],
    ),
    // Braintree (PayPal) production access tokens.
    token(
        "braintree",
        &["access_token$production$"],
        patterns![r"\baccess_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32}\b"],
    ),
    // Plaid access tokens (production and development).
    token(
        "plaid",
        &["access-production-", "access-development-"],
        patterns![
            r"\baccess-(?:production|development)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
        ],
    ),
    token(
        "razorpay",
        &["rzp_live_", "rzp_test_"],
        patterns![r"\brzp_(?:live|test)_[A-Za-z0-9]{14}\b"],
    ),
    token(
        "shippo",
        &["shippo_"],
        patterns![r"\bshippo_(?:live|test)_[a-f0-9]{40}\b"],
    ),
    token(
        "easypost",
        &["EZAK", "EZTK"],
        patterns![r"\bEZ[AT]K[A-Za-z0-9]{54}\b"],
    ),
    token(
        "flutterwave",
        &["FLWSECK"],
        patterns![r"\bFLWSECK(?:_TEST)?-[a-h0-9]{32}-X\b"],
    ),
    token(
        "duffel",
        &["duffel_"],
        patterns![r"\bduffel_(?:test|live)_[A-Za-z0-9_=-]{43}\b"],
    ),
    named(
        "gocardless",
        Group::Secrets,
        &["gocardless"],
        patterns![r"\blive_[A-Za-z0-9_=-]{40}\b"],
        None,
    ),
    named(
        "mollie",
        Group::Secrets,
        &["mollie"],
        patterns![r"\blive_[A-Za-z0-9]{30}\b"],
        None,
    ),
    // Azure storage account keys in connection strings (the key), SAS signatures, client
    // secrets, DevOps personal access tokens.
    token(
        "azure-storage",
        &["AccountKey="],
        patterns![r"AccountKey=([A-Za-z0-9+/]{86}==)"],
    ),
    token(
        "azure-sas",
        &["sig="],
        patterns![r"[?&]sig=([A-Za-z0-9%+/=]{40,})"],
    ),
    token(
        "azure-client-secret",
        &["Q~"],
        patterns![r"\b[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}\b"],
    ),
    token(
        "azure-devops",
        &["AZDO"],
        patterns![r"\b[A-Za-z0-9]{76}AZDO[A-Za-z0-9]{4}\b"],
    ),
    token("alibaba", &["LTAI"], patterns![r"\bLTAI[A-Za-z0-9]{20}\b"]),
    token(
        "yandex",
        &["AQVN"],
        patterns![r"\bAQVN[A-Za-z0-9_-]{35,38}\b"],
    ),
    token(
        "databricks",
        &["dapi"],
        patterns![r"\bdapi[a-f0-9]{32}(?:-[0-9]+)?\b"],
    ),
    // HashiCorp Vault service and batch tokens; Terraform Cloud / HCP Terraform API tokens.
    token(
        "vault",
        &["hvs.", "hvb."],
        patterns![r"\bhv[sb]\.[A-Za-z0-9_-]{24,}"],
    ),
    token(
        "terraform",
        &[".atlasv1."],
        patterns![r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}"],
    ),
    token(
        "doppler",
        &[
            "dp.pt.",
            "dp.st.",
            "dp.sa.",
            "dp.ct.",
            "dp.scim.",
            "dp.audit.",
        ],
        patterns![r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}\b"],
    ),
    token("pulumi", &["pul-"], patterns![r"\bpul-[a-f0-9]{40}\b"]),
    token("prefect", &["pnu_"], patterns![r"\bpnu_[A-Za-z0-9]{36}\b"]),
    token(
        "infracost",
        &["ico-"],
        patterns![r"\bico-[A-Za-z0-9]{32}\b"],
    ),
    token(
        "harness",
        &["pat."],
        patterns![r"\bpat\.[A-Za-z0-9_-]{22}\.[0-9a-f]{24}\.[A-Za-z0-9]{20}\b"],
    ),
    token(
        "scalingo",
        &["tk-us-"],
        patterns![r"\btk-us-[A-Za-z0-9_-]{48}\b"],
    ),
    token(
        "tailscale",
        &["tskey-"],
        patterns![r"\btskey-(?:api|auth|client|webhook|scim)-[A-Za-z0-9]{10,}-[A-Za-z0-9]{20,}"],
    ),
    token(
        "fly",
        &["fo1_", "fm1", "fm2"],
        patterns![
            r"\bfo1_[A-Za-z0-9_-]{43}\b",
            r"\bfm[12][ar]?_[A-Za-z0-9+/=_-]{50,}"
        ],
    ),
    token("netlify", &["nfp_"], patterns![r"\bnfp_[A-Za-z0-9]{36}\b"]),
    token(
        "heroku",
        &["HRKU-"],
        patterns![r"\bHRKU-AA[A-Za-z0-9_-]{58}\b"],
    ),
    named(
        "heroku-api-key",
        Group::Secrets,
        &["heroku"],
        patterns![UUID],
        None,
    ),
    token(
        "supabase",
        &["sbp_", "sb_secret_"],
        patterns![r"\bsbp_[a-f0-9]{40}\b", r"\bsb_secret_[A-Za-z0-9_-]{31,}"],
    ),
    token(
        "planetscale",
        &["pscale_"],
        patterns![r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_.-]{32,64}\b"],
    ),
    token(
        "cloudflare-origin-ca",
        &["v1.0-"],
        patterns![r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b"],
    ),
    named(
        "cloudflare",
        Group::Secrets,
        &["cloudflare", "cf_api", "cf-api"],
        patterns![r"\b[A-Za-z0-9_-]{40}\b", r"\b[a-f0-9]{37}\b"],
        None,
    ),
    named(
        "fastly",
        Group::Secrets,
        &["fastly"],
        patterns![r"\b[A-Za-z0-9_-]{32}\b"],
        None,
    ),
    named(
        "algolia",
        Group::Secrets,
        &["algolia"],
        patterns![r"\b[a-f0-9]{32}\b"],
        None,
    ),
    named(
        "okta",
        Group::Secrets,
        &["okta"],
        patterns![r"\b00[A-Za-z0-9_-]{40}\b"],
        None,
    ),
    named(
        "zendesk",
        Group::Secrets,
        &["zendesk"],
        patterns![r"\b[A-Za-z0-9]{40}\b"],
        None,
    ),
    named("snyk", Group::Secrets, &["snyk"], patterns![UUID], None),
    named(
        "postmark",
        Group::Secrets,
        &["postmark"],
        patterns![UUID],
        None,
    ),
    named(
        "twitch",
        Group::Secrets,
        &["twitch"],
        patterns![r"\b[a-z0-9]{30}\b"],
        None,
    ),
    token(
        "launchdarkly",
        &["api-", "sdk-", "mob-"],
        patterns![
            r"\b(?:api|sdk|mob)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
        ],
    ),
    token(
        "contentful",
        &["CFPAT-"],
        patterns![r"\bCFPAT-[A-Za-z0-9_-]{43}\b"],
    ),
    token(
        "new-relic",
        &["NRAK-", "NRII-", "NRAL"],
        patterns![
            r"\bNRAK-[A-Z0-9]{27}\b",
            r"\bNRII-[A-Za-z0-9_-]{32}\b",
            r"\b[a-f0-9]{36}NRAL\b",
        ],
    ),
    token(
        "dynatrace",
        &["dt0c01."],
        patterns![r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}\b"],
    ),
    // Grafana Cloud tokens and service account tokens.
    token(
        "grafana",
        &["glc_", "glsa_"],
        patterns![
            r"\bglc_[A-Za-z0-9+/]{32,}={0,2}",
            r"\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b"
        ],
    ),
    token(
        "sentry",
        &["sntrys_", "sntryu_"],
        patterns![r"\bsntry[su]_[A-Za-z0-9+/=_-]{40,}"],
    ),
    token(
        "postman",
        &["PMAK-"],
        patterns![r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b"],
    ),
    token(
        "linear",
        &["lin_api_"],
        patterns![r"\blin_api_[A-Za-z0-9]{40}\b"],
    ),
    token(
        "atlassian",
        &["ATATT3"],
        patterns![r"\bATATT3[A-Za-z0-9_=-]{180,}"],
    ),
    token(
        "bitbucket",
        &["ATBB"],
        patterns![r"\bATBB[A-Za-z0-9_=.-]{32,}"],
    ),
    everywhere(
        "asana",
        Group::Secrets,
        patterns![r"\b[12]/[0-9]{13,16}(?:/[0-9]{13,16})?:[A-Za-z0-9]{32}\b"],
        None,
    ),
    everywhere(
        "airtable",
        Group::Secrets,
        patterns![r"\bpat[A-Za-z0-9]{14}\.[a-f0-9]{64}\b"],
        None,
    ),
    token(
        "notion",
        &["ntn_", "secret_"],
        patterns![
            r"\bntn_[0-9]{11}[A-Za-z0-9]{35}\b",
            r"\bsecret_[A-Za-z0-9]{43}\b"
        ],
    ),
    token(
        "figma",
        &["figd_"],
        patterns![r"\bfigd_[A-Za-z0-9_-]{40}\b"],
    ),
    token(
        "frameio",
        &["fio-u-"],
        patterns![r"\bfio-u-[A-Za-z0-9_=-]{64}\b"],
    ),
    token(
        "sourcegraph",
        &["sgp_"],
        patterns![r"\bsgp_(?:[a-fA-F0-9]{16}_)?[a-fA-F0-9]{40}\b"],
    ),
    token("readme", &["rdme_"], patterns![r"\brdme_[a-z0-9]{70}\b"]),
    token("adafruit", &["aio_"], patterns![r"\baio_[A-Za-z0-9]{28}\b"]),
    token(
        "octopus-deploy",
        &["API-"],
        patterns![r"\bAPI-[A-Z0-9]{26}\b"],
    ),
    token(
        "mapbox",
        &["sk.eyJ"],
        patterns![r"\bsk\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"],
    ),
    token("dropbox", &["sl."], patterns![r"\bsl\.[A-Za-z0-9_-]{130,}"]),
    token(
        "facebook",
        &["EAA"],
        patterns![r"\bEAA[BCDGI][A-Za-z0-9]{90,}"],
    ),
    token(
        "twitter",
        &["AAAAAAAAAAAAAAAAAAAAA"],
        patterns![r"\bAAAAAAAAAAAAAAAAAAAAA[A-Za-z0-9%]{30,}"],
    ),
    named(
        "discord",
        Group::Secrets,
        &["discord"],
        patterns![
            r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]+",
            r"\b[MN][A-Za-z0-9]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}\b",
        ],
        None,
    ),
    token(
        "teams-webhook",
        &["webhook.office.com"],
        patterns![r"https://[A-Za-z0-9.-]+\.webhook\.office\.com/webhookb2/[A-Za-z0-9@/-]+"],
    ),
    // 1Password service account tokens and account secret keys.
    token(
        "1password",
        &["ops_eyJ", "A3-"],
        patterns![
            r"\bops_eyJ[A-Za-z0-9+/=_-]{100,}",
            r"\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}\b",
        ],
    ),
    token(
        "amazon-mws",
        &["amzn.mws."],
        patterns![r"\bamzn\.mws\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"],
    ),
    token("adobe", &["p8e-"], patterns![r"\bp8e-[A-Za-z0-9]{32}\b"]),
    named(
        "datadog",
        Group::Secrets,
        &[
            "datadog",
            "dd_api_key",
            "dd_app_key",
            "dd-api-key",
            "dd-application-key",
        ],
        patterns![r"\b[a-f0-9]{40}\b", r"\b[a-f0-9]{32}\b"],
        None,
    ),
    token(
        "defined-networking",
        &["dnkey-"],
        patterns![r"\bdnkey-[a-z0-9=_-]{26}-[a-z0-9=_-]{52}\b"],
    ),
    token(
        "openshift",
        &["sha256~"],
        patterns![r"\bsha256~[A-Za-z0-9_-]{43}\b"],
    ),
    token(
        "typeform",
        &["tfp_"],
        patterns![r"\btfp_[A-Za-z0-9_.=-]{59}\b"],
    ),
    token(
        "hubspot",
        &["pat-na1-", "pat-eu1-"],
        patterns![
            r"\bpat-(?:na|eu)1-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
        ],
    ),
    token(
        "intra42",
        &["s-s4t2"],
        patterns![r"\bs-s4t2(?:ud|af)-[a-f0-9]{64}\b"],
    ),
    token(
        "maxmind",
        &["_mmk"],
        patterns![r"\b[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk\b"],
    ),
    token(
        "sonar",
        &["squ_", "sqp_", "sqa_"],
        patterns![r"\bsq[upa]_[a-f0-9]{40}\b"],
    ),
    token(
        "langsmith",
        &["lsv2_"],
        patterns![r"\blsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}\b"],
    ),
    token(
        "pinecone",
        &["pcsk_"],
        patterns![r"\bpcsk_[A-Za-z0-9_]{50,}"],
    ),
    named(
        "wandb",
        Group::Secrets,
        &["wandb"],
        patterns![r"\b[a-f0-9]{40}\b"],
        None,
    ),
    token("render", &["rnd_"], patterns![r"\brnd_[A-Za-z0-9]{32}\b"]),
    token("neon", &["napi_"], patterns![r"\bnapi_[a-z0-9]{64}\b"]),
    token(
        "resend",
        &["re_"],
        patterns![r"\bre_[A-Za-z0-9]{8}_[A-Za-z0-9]{24}\b"],
    ),
    token(
        "mailersend",
        &["mlsn."],
        patterns![r"\bmlsn\.[a-f0-9]{64}\b"],
    ),
    named(
        "twilio-auth-token",
        Group::Secrets,
        &["twilio"],
        patterns![r"\b[a-f0-9]{32}\b"],
        None,
    ),
    token(
        "circleci",
        &["CCIPAT_"],
        patterns![r"\bCCIPAT_[A-Za-z0-9]{22}_[a-f0-9]{40}\b"],
    ),
    token("buildkite", &["bkua_"], patterns![r"\bbkua_[a-f0-9]{40}\b"]),
    token(
        "google-refresh-token",
        &["1//0"],
        patterns![r"\b1//0[A-Za-z0-9_-]{40,}"],
    ),
    token(
        "firebase-fcm",
        &[":APA91b"],
        patterns![r"\bAAAA[A-Za-z0-9_-]{7}:APA91b[A-Za-z0-9_-]{134}"],
    ),
    named(
        "deepseek",
        Group::Secrets,
        &["deepseek"],
        patterns![r"\bsk-[a-f0-9]{32}\b"],
        None,
    ),
    named(
        "vercel",
        Group::Secrets,
        &["vercel"],
        patterns![r"\b[A-Za-z0-9]{24}\b"],
        None,
    ),
    named(
        "mongodb-atlas",
        Group::Secrets,
        &["atlas", "mongodb"],
        patterns![UUID],
        None,
    ),
    named(
        "binance",
        Group::Secrets,
        &["binance"],
        patterns![r"\b[A-Za-z0-9]{64}\b"],
        None,
    ),
    named(
        "paypal",
        Group::Secrets,
        &["paypal"],
        patterns![r"\b[A-Za-z0-9_-]{80}\b"],
        None,
    ),
    token(
        "checkout",
        &["sk_sbox_"],
        patterns![r"\bsk_sbox_[a-z0-9]{26}\b"],
    ),
    // Telegram bot tokens (bot id, colon, secret).
    token(
        "telegram",
        &[":AA"],
        patterns![r"\b[0-9]{8,10}:AA[0-9A-Za-z_-]{33}"],
    ),
    token(
        "age",
        &["AGE-SECRET-KEY-1"],
        patterns![r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b"],
    ),
    // user:password@ in a URL: the password.
    everywhere(
        "url-password",
        Group::Secrets,
        patterns![r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:([^\s@/]+)@"],
        None,
    ),
    Builtin {
        // password=…, "secret": "…", TOKEN: …, Pwd=…; — the value.
        name: "assignment",
        group: Group::Secrets,
        patterns: &[Pattern {
            regex: r#"(?i:passw(?:or)?d|pwd|secret|token|api_?key|access_?key|auth_?key|private_?key)(?:[_-][A-Za-z]+)?["']?[ \t]*[:=][ \t]*(?:"([^"\r\n]+)"|'([^'\r\n]+)'|([^\s"',;&<>]+))"#,
            opens_block: false,
            rescans: true,
        }],
        validator: Some(Validator::Literal),
        on_by_default: true,
        keywords: &[],
        words: &[
            "passw",
            "pwd",
            "secret",
            "token",
            "api_key",
            "apikey",
            "access_key",
            "accesskey",
            "auth_key",
            "authkey",
            "private_key",
            "privatekey",
        ],
        words_alone: false,
    },
    // Any other name with key, credential or auth in it, when its value looks random:
    // `client_key: 8fK2...` but not `sort_key: created_at`.
    Builtin {
        name: "generic-secret",
        group: Group::Secrets,
        patterns: patterns![
            r#"(?i:(?:key|credential|auth)[a-z0-9_.-]*)["']?[ \t]*[:=][ \t]*["']?([A-Za-z0-9+/=_.~-]{16,})"#
        ],
        validator: Some(Validator::Entropy(35)),
        on_by_default: true,
        keywords: &[],
        words: &["key", "credential", "auth"],
        words_alone: false,
    },
    everywhere(
        "email",
        Group::Pii,
        patterns![r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"],
        None,
    ),
    // National identifiers with a check digit and a distinctive shape: everywhere. Before
    // the card: where both match at one place and the card's check refuses it, the search
    // goes on from the next byte.
    everywhere(
        "it-codice-fiscale",
        Group::Pii,
        patterns![
            r"\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]\b"
        ],
        Some(Validator::CodiceFiscale),
    ),
    everywhere(
        "fr-nir",
        Group::Pii,
        patterns![
            r"\b[12] ?[0-9]{2} ?(?:0[1-9]|1[0-2]|[2-9][0-9]) ?(?:2[AB]|[0-9]{2}) ?[0-9]{3} ?[0-9]{3} ?[0-9]{2}\b"
        ],
        Some(Validator::Nir),
    ),
    everywhere(
        "br-cpf",
        Group::Pii,
        patterns![r"\b[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}\b"],
        Some(Validator::Cpf),
    ),
    everywhere(
        "iban",
        Group::Payment,
        patterns![r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"],
        Some(Validator::Mod97),
    ),
    // 13–19 digits, in groups separated by single spaces, dashes or dots (one kind), or none.
    everywhere(
        "card",
        Group::Payment,
        patterns![r"\b[0-9](?:[ .-]?[0-9]){12,18}\b"],
        Some(Validator::Card),
    ),
    everywhere(
        "ssn",
        Group::Pii,
        patterns![r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"],
        Some(Validator::Ssn),
    ),
    // International: a plus, the country code, then groups (`+1 (415) 555-2671`, `+44 20 7946
    // 0958`); 8–15 digits in all.
    everywhere(
        "phone",
        Group::Pii,
        patterns![r"\+[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}\b"],
        Some(Validator::Phone),
    ),
    // National formats (`(415) 555-2671`, `020 7946 0958`) look like any other number: only
    // near a word that says it is one.
    named(
        "phone-national",
        Group::Pii,
        &["phone", "tel", "mobile", "cell", "fax"],
        patterns![
            r"(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[-. ])[2-9][0-9]{2}[-. ][0-9]{4}\b",
            r"\b0[1-9][0-9]{1,4}[ -]?[0-9]{3,4}[ -]?[0-9]{3,4}\b",
        ],
        Some(Validator::Phone),
    ),
    // National identifiers whose shape is common: only near their name.
    named(
        "uk-nino",
        Group::Pii,
        &["nino", "national insurance", "ni number"],
        patterns![r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b"],
        Some(Validator::Nino),
    ),
    named(
        "nl-bsn",
        Group::Pii,
        &["bsn", "burgerservicenummer"],
        patterns![r"\b[0-9]{4}\.?[0-9]{2}\.?[0-9]{3}\b"],
        Some(Validator::Bsn),
    ),
    named(
        "ca-sin",
        Group::Pii,
        &["sin", "social insurance"],
        patterns![r"\b[1-79][0-9]{2}[ -]?[0-9]{3}[ -]?[0-9]{3}\b"],
        Some(Validator::Luhn),
    ),
    named(
        "de-tax-id",
        Group::Pii,
        &["steuer", "idnr", "tax id", "tin"],
        patterns![r"\b[1-9][0-9] ?[0-9]{3} ?[0-9]{3} ?[0-9]{3}\b"],
        Some(Validator::SteuerId),
    ),
    named(
        "es-dni",
        Group::Pii,
        &["dni", "nie", "nif"],
        patterns![r"\b[XYZ0-9][0-9]{7}-?[A-Z]\b"],
        Some(Validator::Dni),
    ),
    named(
        "in-aadhaar",
        Group::Pii,
        &["aadhaar", "uidai"],
        patterns![r"\b[2-9][0-9]{3} ?[0-9]{4} ?[0-9]{4}\b"],
        Some(Validator::Verhoeff),
    ),
    named(
        "br-cpf-plain",
        Group::Pii,
        &["cpf"],
        patterns![r"\b[0-9]{11}\b"],
        Some(Validator::Cpf),
    ),
    Builtin {
        // Off by default: version strings and OIDs look the same.
        name: "ipv4",
        group: Group::Pii,
        patterns: patterns![
            r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b"
        ],
        validator: None,
        on_by_default: false,
        keywords: &[],
        words: &[],
        words_alone: false,
    },
];

/// Closes a block opened by the `pem` opener.
pub const BLOCK_CLOSE: &str = r"-----END[ A-Z]*PRIVATE KEY(?: BLOCK)?-----";

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
    card_refusal(candidate).is_none()
}

fn card_refusal(candidate: &[u8]) -> Option<&'static str> {
    let digits = digits(candidate);
    if !(13..=19).contains(&digits.len()) {
        return Some("not 13 to 19 digits");
    }
    if !luhn(&digits) {
        return Some("the Luhn check fails");
    }
    // Mixed separators (`4242-4242 4242`) are not how anyone writes a card number.
    let kinds = [b'-', b' ', b'.']
        .iter()
        .filter(|s| candidate.contains(s))
        .count();
    if kinds > 1 {
        return Some("separators of more than one kind");
    }
    let prefix = |n: usize| {
        digits[..n]
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let length = digits.len();
    let issued = ISSUERS.iter().any(|issuer| {
        (issuer.first..=issuer.last).contains(&prefix(issuer.digits))
            && (issuer.lengths.0..=issuer.lengths.1).contains(&length)
    });
    (!issued).then_some("no card issuer uses this prefix with this length")
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

/// Shannon entropy of at least `bits` per byte, letters and digits both present.
fn random_looking(candidate: &[u8], bits: f64) -> bool {
    if !candidate.iter().any(u8::is_ascii_digit) || !candidate.iter().any(u8::is_ascii_alphabetic) {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in candidate {
        counts[usize::from(b)] += 1;
    }
    let n = candidate.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy >= bits
}

/// Not a path, a call, a placeholder, an empty word or a reference to another variable.
fn literal_value(v: &[u8]) -> bool {
    let starts = |p: &[u8]| v.starts_with(p);
    if starts(b"/") || starts(b"./") || starts(b"../") || starts(b"~/") {
        return false; // a file
    }
    if matches!(v.first(), Some(b'$' | b'%' | b'{' | b'<' | b'*'))
        || v.contains(&b'(')
        || v.ends_with(b"[")
    {
        return false; // ${VAR}, %(name)s, {{ secret }}, <password>, ****, f(), env[
    }
    let lower = v.to_ascii_lowercase();
    if matches!(
        lower.as_slice(),
        b"null" | b"none" | b"nil" | b"true" | b"false" | b"undefined" | b"required" | b"optional"
    ) {
        return false;
    }
    // `self.settings.api_key`, `config.token`: a dotted path of names, not a value.
    let dotted = v.contains(&b'.')
        && v.iter()
            .all(|b| b.is_ascii_alphabetic() || *b == b'_' || *b == b'.')
        && !v.starts_with(b".")
        && !v.ends_with(b".");
    !dotted
}

fn phone(candidate: &[u8]) -> bool {
    let n = candidate.iter().filter(|b| b.is_ascii_digit()).count();
    let opens = candidate.iter().filter(|&&b| b == b'(').count();
    let closes = candidate.iter().filter(|&&b| b == b')').count();
    (8..=15).contains(&n) && opens == closes && opens <= 1
}

fn codice_fiscale(candidate: &[u8]) -> bool {
    // Odd positions (1st, 3rd, …) map through this table; even ones count 0–25 (or 0–9).
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    if candidate.len() != 16 {
        return false;
    }
    let value = |b: u8| match b {
        b'0'..=b'9' => u32::from(b - b'0'),
        _ => u32::from(b - b'A'),
    };
    let sum: u32 = candidate[..15]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let v = value(b) as usize;
            if i % 2 == 0 { ODD[v] } else { v as u32 }
        })
        .sum();
    candidate[15] == b'A' + (sum % 26) as u8
}

fn nir(candidate: &[u8]) -> bool {
    let mut compact: Vec<u8> = candidate.iter().copied().filter(|b| *b != b' ').collect();
    if compact.len() != 15 {
        return false;
    }
    // Corsica's departments 2A and 2B count as 19 and 18.
    match &compact[5..7] {
        b"2A" => compact[5..7].copy_from_slice(b"19"),
        b"2B" => compact[5..7].copy_from_slice(b"18"),
        _ => {}
    }
    let number = |bytes: &[u8]| {
        bytes.iter().try_fold(0u64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
        })
    };
    match (number(&compact[..13]), number(&compact[13..])) {
        (Some(n), Some(key)) => 97 - n % 97 == key,
        _ => false,
    }
}

fn cpf(d: &[u8]) -> bool {
    if d.len() != 11 || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let check = |upto: usize| {
        let sum: u32 = d[..upto]
            .iter()
            .enumerate()
            .map(|(i, &x)| u32::from(x) * (upto as u32 + 1 - i as u32))
            .sum();
        (sum * 10 % 11 % 10) as u8
    };
    check(9) == d[9] && check(10) == d[10]
}

fn nino(candidate: &[u8]) -> bool {
    let prefix = &candidate[..2];
    !matches!(
        prefix,
        b"BG" | b"GB" | b"NK" | b"KN" | b"TN" | b"NT" | b"ZZ"
    )
}

fn bsn(d: &[u8]) -> bool {
    if d.len() != 9 || d.iter().all(|&x| x == 0) {
        return false;
    }
    let sum: i32 = d[..8]
        .iter()
        .enumerate()
        .map(|(i, &x)| i32::from(x) * (9 - i as i32))
        .sum::<i32>()
        - i32::from(d[8]);
    sum % 11 == 0
}

fn steuer_id(d: &[u8]) -> bool {
    if d.len() != 11 || d[0] == 0 {
        return false;
    }
    let mut product = 10u32;
    for &x in &d[..10] {
        let mut sum = (u32::from(x) + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = sum * 2 % 11;
    }
    let check = (11 - product) % 10;
    check == u32::from(d[10])
}

fn dni(candidate: &[u8]) -> bool {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let compact: Vec<u8> = candidate.iter().copied().filter(|b| *b != b'-').collect();
    if compact.len() != 9 {
        return false;
    }
    // NIE: X, Y, Z stand for 0, 1, 2.
    let first = match compact[0] {
        b'X' => 0,
        b'Y' => 1,
        b'Z' => 2,
        b @ b'0'..=b'9' => u32::from(b - b'0'),
        _ => return false,
    };
    let number = compact[1..8]
        .iter()
        .fold(first, |n, &b| n * 10 + u32::from(b - b'0'));
    LETTERS[(number % 23) as usize] == compact[8]
}

fn verhoeff(digits: &[u8]) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let mut c = 0u8;
    for (i, &d) in digits.iter().rev().enumerate() {
        c = D[usize::from(c)][usize::from(P[i % 8][usize::from(d)])];
    }
    digits.len() == 12 && c == 0
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

    #[test]
    fn national_identifiers_need_their_check_digits() {
        let cases: &[(Validator, &str, &str)] = &[
            (
                Validator::CodiceFiscale,
                "RSSMRA85T10A562S",
                "RSSMRA85T10A562T",
            ),
            (
                Validator::Nir,
                "1 85 05 78 006 084 91",
                "1 85 05 78 006 084 92",
            ),
            (Validator::Nir, "290012A00400509", "290012B00400509"),
            (Validator::Cpf, "529.982.247-25", "529.982.247-26"),
            (Validator::Cpf, "52998224725", "11111111111"),
            (Validator::Bsn, "111222333", "123456789"),
            (Validator::SteuerId, "86095742719", "86095742718"),
            (Validator::Dni, "12345678Z", "12345678A"),
            (Validator::Dni, "X1234567L", "X1234567M"),
            (Validator::Verhoeff, "4990 1234 5678", "4990 1234 5679"),
            (Validator::Luhn, "130 692 544", "130 692 545"),
            (Validator::Nino, "AB123456C", "GB123456C"),
        ];
        for (validator, good, bad) in cases {
            assert!(validator.accepts(good.as_bytes()), "{validator:?} {good}");
            assert!(!validator.accepts(bad.as_bytes()), "{validator:?} {bad}");
        }
    }

    #[test]
    fn entropy_tells_random_values_from_names() {
        let v = Validator::from_name("entropy>=3.5").unwrap();
        assert_eq!(v, Validator::Entropy(35));
        assert!(v.accepts(b"8fK2pQ9xLm4Rt7Vz1Bn6"));
        assert!(!v.accepts(b"created_at_descending"), "no digits");
        assert!(!v.accepts(b"aaaa1111aaaa1111"), "too regular");
        assert_eq!(
            Validator::from_name("entropy"),
            Some(Validator::Entropy(35))
        );
        assert_eq!(Validator::from_name("entropy>=9"), None);
        assert_eq!(Validator::from_name("entropy>=x"), None);
    }
}
