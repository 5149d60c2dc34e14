//! SAML 2.0 logins: SP-initiated, an AuthnRequest over the HTTP-Redirect binding and the
//! Response over HTTP-POST to the assertion consumer service.
//!
//! A Response is trusted only as far as an IdP signature covers it. xmlsec (through
//! samael) verifies every signature against the IdP's metadata certificates and reduces
//! the document to the signed elements; every value that decides who logs in (subject,
//! attributes, audience, validity, recipient, InResponseTo) is read from that reduced
//! document. A document with more than one assertion is refused outright, whatever its
//! signatures: that shape is what signature-wrapping attacks need.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use libxml::parser::{Parser, ParserOptions};
use libxml::tree::{Document, NodeType};
use libxml::xpath::Context;
use rand::RngCore;
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, CryptoProvider, ReduceMode, XmlSec,
};
use serde_json::json;
use tokio::sync::RwLock;

use super::{ExternalIdentity, sha256_hex};
use crate::auth::service;
use crate::config::{ConfigError, SamlConfig};
use crate::core::Core;
use crate::error::{Error, ErrorKind};
use crate::store::AuthRequestRecord;

const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const BINDING_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
const BINDING_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const NAMEID_PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";

/// How long a sent AuthnRequest waits for its response.
const PENDING_SECONDS: i64 = 600;
/// How long fetched IdP metadata is reused.
const METADATA_TTL: Duration = Duration::from_secs(900);
/// Largest Response accepted, decoded.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Signature algorithms accepted on responses (no SHA-1, no DSA).
const ALLOWED_ALGS: [AllowedSignatureAlgorithm; 6] = [
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// What SARK needs of the IdP's metadata.
#[derive(Clone, Debug)]
struct IdpMetadata {
    entity_id: String,
    sso_redirect: String,
    certs: Vec<CertificateDer>,
}

/// Why a Response was refused: the audit reason and a description.
#[derive(Debug)]
pub struct Refusal {
    reason: &'static str,
    detail: String,
}

fn refusal(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// An assertion that passed every check that needs no store.
#[derive(Debug)]
struct Verified {
    assertion_id: String,
    in_response_to: String,
    name_id: String,
    attributes: HashMap<String, Vec<String>>,
    valid_until: DateTime<Utc>,
}

/// The configured IdP.
pub struct SamlProvider {
    config: SamlConfig,
    http: reqwest::Client,
    metadata: RwLock<Option<(IdpMetadata, Instant)>>,
    sp_key: Option<openssl::pkey::PKey<openssl::pkey::Private>>,
    sp_cert_base64: Option<String>,
}

fn namespaces(ctx: &Context) -> Result<(), String> {
    for (prefix, href) in [
        ("samlp", NS_PROTOCOL),
        ("saml", NS_ASSERTION),
        ("md", NS_METADATA),
        ("ds", NS_DSIG),
    ] {
        ctx.register_namespace(prefix, href)
            .map_err(|()| format!("cannot register the namespace {prefix}"))?;
    }
    Ok(())
}

/// Parses untrusted XML strictly: UTF-8 only (so the checks here see what libxml sees), no
/// DTD (so no entities, internal or external), no network, and no recovery from errors (a
/// repaired document is not the one signed).
fn parse(xml: &str) -> Result<(Document, Context), String> {
    if xml.contains('\0') {
        return Err("the document holds NUL characters (not UTF-8 XML)".into());
    }
    let head = xml
        .get(..xml.len().min(200))
        .unwrap_or_default()
        .to_ascii_lowercase();
    if let Some(declared) = head
        .split("encoding=")
        .nth(1)
        .filter(|_| head.starts_with("<?xml"))
        .and_then(|rest| rest.get(1..).and_then(|r| r.split(['"', '\'']).next()))
        && declared != "utf-8"
    {
        return Err(format!(
            "the document declares encoding {declared}; only UTF-8 is accepted"
        ));
    }
    if xml.to_ascii_uppercase().contains("<!DOCTYPE") {
        return Err("documents with a DTD are not accepted".into());
    }
    let options = ParserOptions {
        recover: false,
        no_net: true,
        encoding: Some("UTF-8"),
        ..ParserOptions::default()
    };
    let doc = Parser::default()
        .parse_string_with_options(xml, options)
        .map_err(|e| format!("not well-formed XML ({e:?})"))?;
    let root = doc
        .get_root_element()
        .ok_or("the document has no root element")?;
    let mut sibling = root.get_prev_sibling();
    while let Some(node) = sibling {
        if matches!(
            node.get_type(),
            Some(NodeType::DTDNode | NodeType::DocumentTypeNode)
        ) {
            return Err("documents with a DTD are not accepted".into());
        }
        sibling = node.get_prev_sibling();
    }
    let ctx = Context::new(&doc).map_err(|()| "cannot evaluate XPath".to_owned())?;
    namespaces(&ctx)?;
    Ok((doc, ctx))
}

/// libxml could not evaluate an XPath expression. None of the expressions here can fail on
/// a parsed document, so a failure is named instead of being read as "no match".
struct XPathFailed(String);

impl XPathFailed {
    fn of(xpath: &str) -> Self {
        Self(format!("libxml could not evaluate {xpath}"))
    }
}

impl From<XPathFailed> for Refusal {
    fn from(failed: XPathFailed) -> Self {
        refusal("xpath_failed", failed.0)
    }
}

impl From<XPathFailed> for String {
    fn from(failed: XPathFailed) -> Self {
        failed.0
    }
}

fn values(ctx: &mut Context, xpath: &str) -> Result<Vec<String>, XPathFailed> {
    ctx.findvalues(xpath, None)
        .map_err(|()| XPathFailed::of(xpath))
}

fn value(ctx: &mut Context, xpath: &str) -> Result<Option<String>, XPathFailed> {
    Ok(values(ctx, xpath)?
        .into_iter()
        .next()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty()))
}

fn count(ctx: &mut Context, xpath: &str) -> Result<usize, XPathFailed> {
    ctx.findnodes(xpath, None)
        .map(|n| n.len())
        .map_err(|()| XPathFailed::of(xpath))
}

/// The IdP `entity_id` (or the only IdP) of `xml`; certificates and endpoints are read
/// from that entity alone, so another IdP of an aggregate cannot vouch for it.
fn parse_metadata(xml: &str, entity_id: Option<&str>) -> Result<IdpMetadata, String> {
    let (_doc, mut ctx) = parse(xml)?;
    let idps = values(
        &mut ctx,
        "//md:EntityDescriptor[md:IDPSSODescriptor]/@entityID",
    )?;
    let entity_id = match (entity_id, idps.as_slice()) {
        (Some(wanted), found) if found.iter().any(|f| f == wanted) => wanted.to_owned(),
        (Some(wanted), _) => return Err(format!("no IdP with entityID `{wanted}`")),
        (None, [only]) => only.clone(),
        (None, []) => return Err("no EntityDescriptor with an IDPSSODescriptor".into()),
        (None, _) => {
            return Err("several IdPs are described: set saml.idp_entity_id".into());
        }
    };
    if entity_id.contains(['\'', '"']) {
        return Err("the IdP entityID holds a quote".into());
    }
    let entity = format!("//md:EntityDescriptor[@entityID='{entity_id}']");
    let sso_redirect = value(
        &mut ctx,
        &format!(
            "{entity}/md:IDPSSODescriptor/md:SingleSignOnService[@Binding='{BINDING_REDIRECT}']/@Location"
        ),
    )?
    .ok_or("no SingleSignOnService with the HTTP-Redirect binding")?;
    url::Url::parse(&sso_redirect).map_err(|e| format!("SingleSignOnService Location: {e}"))?;
    let certs: Vec<CertificateDer> = values(
        &mut ctx,
        &format!(
            "{entity}/md:IDPSSODescriptor/md:KeyDescriptor[not(@use) or @use='signing']/ds:KeyInfo/ds:X509Data/ds:X509Certificate"
        ),
    )?
    .into_iter()
    .map(|text| {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        STANDARD
            .decode(compact)
            .map(CertificateDer::from)
            .map_err(|e| format!("a signing certificate is not base64: {e}"))
    })
    .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err("no signing certificate in the IDPSSODescriptor".into());
    }
    Ok(IdpMetadata {
        entity_id,
        sso_redirect,
        certs,
    })
}

fn time(value: &str) -> Result<DateTime<Utc>, Refusal> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| refusal("malformed", format!("`{value}` is not a timestamp")))
}

/// Every check of a Response that needs only the document, the IdP and the clock.
fn verify(
    xml: &str,
    idp: &IdpMetadata,
    config: &SamlConfig,
    now: DateTime<Utc>,
) -> Result<Verified, Refusal> {
    let skew = chrono::Duration::seconds(i64::try_from(config.clock_skew_seconds).unwrap_or(0));
    let (_doc, mut ctx) = parse(xml).map_err(|e| refusal("malformed", e))?;
    if count(&mut ctx, "/samlp:Response")? != 1 {
        return Err(refusal("malformed", "the document is not a samlp:Response"));
    }
    if count(&mut ctx, "//saml:EncryptedAssertion")? > 0 {
        return Err(refusal(
            "encrypted_assertion",
            "encrypted assertions are not supported",
        ));
    }
    match count(&mut ctx, "//saml:Assertion")? {
        1 => {}
        0 => return Err(refusal("no_assertion", "the response holds no assertion")),
        n => {
            return Err(refusal(
                "multiple_assertions",
                format!("the response holds {n} assertions (signature wrapping?)"),
            ));
        }
    }
    let assertion_id = value(&mut ctx, "//saml:Assertion/@ID")?
        .ok_or_else(|| refusal("malformed", "the assertion has no ID"))?;
    if count(&mut ctx, "//ds:Signature")? == 0 {
        return Err(refusal("unsigned", "nothing in the response is signed"));
    }
    let signed = XmlSec::reduce_xml_to_signed_with_allowed_algorithms(
        xml,
        &idp.certs,
        ReduceMode::ValidateAndMarkNoAncestors,
        Some(&ALLOWED_ALGS),
    )
    .map_err(|e| refusal("invalid_signature", format!("signature check failed: {e}")))?;

    // The envelope: signed or not, it must agree with the signed assertion below.
    if value(&mut ctx, "/samlp:Response/@Destination")?.as_deref() != Some(&config.acs_url) {
        return Err(refusal("destination", "Destination is not this ACS"));
    }
    let status = value(
        &mut ctx,
        "/samlp:Response/samlp:Status/samlp:StatusCode/@Value",
    )?;
    if status.as_deref() != Some(STATUS_SUCCESS) {
        return Err(refusal(
            "status",
            format!("the IdP answered {}", status.unwrap_or_default()),
        ));
    }
    if let Some(issuer) = value(&mut ctx, "/samlp:Response/saml:Issuer")?
        && issuer != idp.entity_id
    {
        return Err(refusal("issuer", format!("response issuer `{issuer}`")));
    }
    let envelope_in_response_to = value(&mut ctx, "/samlp:Response/@InResponseTo")?;

    // The assertion, from the signed part only.
    let (_signed_doc, mut s) = parse(&signed).map_err(|e| refusal("malformed", e))?;
    let assertion = "//saml:Assertion";
    if count(&mut s, assertion)? != 1
        || value(&mut s, &format!("{assertion}/@ID"))?.as_deref() != Some(&assertion_id)
    {
        return Err(refusal(
            "unsigned_assertion",
            "the assertion is not covered by an IdP signature",
        ));
    }
    let issuer = value(&mut s, &format!("{assertion}/saml:Issuer"))?;
    if issuer.as_deref() != Some(&idp.entity_id) {
        return Err(refusal(
            "issuer",
            format!("assertion issuer `{}`", issuer.unwrap_or_default()),
        ));
    }
    let conditions = format!("{assertion}/saml:Conditions");
    if let Some(not_before) = value(&mut s, &format!("{conditions}/@NotBefore"))?
        && time(&not_before)? > now + skew
    {
        return Err(refusal("not_yet_valid", format!("NotBefore {not_before}")));
    }
    let mut not_after = None;
    if let Some(text) = value(&mut s, &format!("{conditions}/@NotOnOrAfter"))? {
        let until = time(&text)?;
        if until <= now - skew {
            return Err(refusal("expired", format!("NotOnOrAfter {until}")));
        }
        not_after = Some(until);
    }
    let restrictions = count(&mut s, &format!("{conditions}/saml:AudienceRestriction"))?;
    let ours = count(
        &mut s,
        &format!(
            "{conditions}/saml:AudienceRestriction[saml:Audience[normalize-space(.)='{}']]",
            xpath_literal_safe(&config.sp_entity_id)?
        ),
    )?;
    if restrictions == 0 || ours != restrictions {
        return Err(refusal(
            "audience",
            "the assertion is not addressed to this SP",
        ));
    }
    let confirmation = format!(
        "{assertion}/saml:Subject/saml:SubjectConfirmation[@Method='{BEARER}']/saml:SubjectConfirmationData"
    );
    if count(&mut s, &confirmation)? != 1 {
        return Err(refusal(
            "subject_confirmation",
            "no single bearer SubjectConfirmationData",
        ));
    }
    if value(&mut s, &format!("{confirmation}/@Recipient"))?.as_deref() != Some(&config.acs_url) {
        return Err(refusal("recipient", "Recipient is not this ACS"));
    }
    if let Some(not_before) = value(&mut s, &format!("{confirmation}/@NotBefore"))?
        && time(&not_before)? > now + skew
    {
        return Err(refusal(
            "not_yet_valid",
            format!("SubjectConfirmationData NotBefore {not_before}"),
        ));
    }
    let confirm_until = value(&mut s, &format!("{confirmation}/@NotOnOrAfter"))?
        .ok_or_else(|| refusal("subject_confirmation", "no NotOnOrAfter"))?;
    let confirm_until = time(&confirm_until)?;
    if confirm_until <= now - skew {
        return Err(refusal(
            "expired",
            format!("SubjectConfirmationData NotOnOrAfter {confirm_until}"),
        ));
    }
    let in_response_to =
        value(&mut s, &format!("{confirmation}/@InResponseTo"))?.ok_or_else(|| {
            refusal(
                "unsolicited",
                "the assertion answers no request (IdP-initiated logins are not accepted)",
            )
        })?;
    if envelope_in_response_to.is_some_and(|e| e != in_response_to) {
        return Err(refusal(
            "in_response_to",
            "the response and its assertion answer different requests",
        ));
    }
    let name_id = value(&mut s, &format!("{assertion}/saml:Subject/saml:NameID"))?
        .ok_or_else(|| refusal("malformed", "the assertion has no NameID"))?;
    // Accounts are keyed by the NameID: only a persistent one names the same user every
    // time, and no other format can be made to collide with it.
    let format = value(
        &mut s,
        &format!("{assertion}/saml:Subject/saml:NameID/@Format"),
    )?;
    if format.as_deref() != Some(NAMEID_PERSISTENT) {
        return Err(refusal(
            "name_id_format",
            format!(
                "NameID format {} is not persistent",
                format.unwrap_or_default()
            ),
        ));
    }
    let mut attributes: HashMap<String, Vec<String>> = HashMap::new();
    let nodes = s
        .findnodes(
            &format!("{assertion}/saml:AttributeStatement/saml:Attribute"),
            None,
        )
        .unwrap_or_default();
    for node in nodes {
        let values: Vec<String> = s
            .findvalues("saml:AttributeValue", Some(&node))
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.trim().to_owned())
            .collect();
        for key in ["Name", "FriendlyName"] {
            if let Some(name) = node.get_attribute(key) {
                attributes
                    .entry(name)
                    .or_default()
                    .extend(values.iter().cloned());
            }
        }
    }
    Ok(Verified {
        assertion_id,
        in_response_to,
        name_id,
        attributes,
        // Remembered for as long as some check above could still pass.
        valid_until: not_after.map_or(confirm_until, |n| n.max(confirm_until)) + skew,
    })
}

/// The SP entity ID inside an XPath string literal; refused if it holds a quote.
fn xpath_literal_safe(value: &str) -> Result<&str, Refusal> {
    if value.contains('\'') {
        Err(refusal("configuration", "saml.sp_entity_id holds a quote"))
    } else {
        Ok(value)
    }
}

fn escape_attr(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl SamlProvider {
    /// Reads the key, certificate and (if given as a file) the IdP metadata; fails naming
    /// the key when one is unusable. Fetches nothing yet.
    pub fn new(config: SamlConfig) -> Result<Self, ConfigError> {
        let sp_key = config
            .sp_key_file
            .as_ref()
            .map(|path| {
                let pem = std::fs::read(path)
                    .map_err(|e| ConfigError::from_key("saml.sp_key_file", e))?;
                openssl::pkey::PKey::private_key_from_pem(&pem).map_err(|e| {
                    ConfigError::from_key(
                        "saml.sp_key_file",
                        format!("not a PEM private key ({e})"),
                    )
                })
            })
            .transpose()?;
        let sp_cert_base64 = config
            .sp_cert_file
            .as_ref()
            .map(|path| {
                let pem = std::fs::read(path)
                    .map_err(|e| ConfigError::from_key("saml.sp_cert_file", e))?;
                let cert = openssl::x509::X509::from_pem(&pem).map_err(|e| {
                    ConfigError::from_key(
                        "saml.sp_cert_file",
                        format!("not a PEM certificate ({e})"),
                    )
                })?;
                let der = cert
                    .to_der()
                    .map_err(|e| ConfigError::from_key("saml.sp_cert_file", e))?;
                Ok::<_, ConfigError>(STANDARD.encode(der))
            })
            .transpose()?;
        let metadata = match &config.idp_metadata_file {
            Some(path) => {
                let xml = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::from_key("saml.idp_metadata_file", e))?;
                let parsed = parse_metadata(&xml, config.idp_entity_id.as_deref())
                    .map_err(|e| ConfigError::from_key("saml.idp_metadata_file", e))?;
                Some((parsed, Instant::now()))
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(config.timeout_seconds))
            .build()
            .map_err(|e| ConfigError::from_key("saml.idp_metadata_url", e))?;
        Ok(Self {
            config,
            http,
            metadata: RwLock::new(metadata),
            sp_key,
            sp_cert_base64,
        })
    }

    async fn idp(&self, fresh: bool) -> Result<IdpMetadata, Error> {
        let Some(url) = &self.config.idp_metadata_url else {
            // From a file: read once at start-up.
            return self
                .metadata
                .read()
                .await
                .as_ref()
                .map(|(m, _)| m.clone())
                .ok_or_else(|| Error::internal("SAML metadata file not loaded"));
        };
        if !fresh
            && let Some((metadata, at)) = self.metadata.read().await.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let fetched = async {
            let response = self.http.get(url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("metadata answered {}", response.status()));
            }
            let text = response.text().await.map_err(|e| e.to_string())?;
            if text.len() > 1024 * 1024 {
                return Err("metadata larger than 1 MiB".into());
            }
            parse_metadata(&text, self.config.idp_entity_id.as_deref())
        }
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "the SAML IdP metadata cannot be fetched");
            Error::unavailable(
                "saml_unavailable",
                "the SAML identity provider cannot be reached; try again later",
            )
        })?;
        *self.metadata.write().await = Some((fetched.clone(), Instant::now()));
        Ok(fetched)
    }

    /// Whether the IdP's metadata can be had now.
    pub async fn probe(&self) -> Result<(), Error> {
        self.idp(true).await.map(|_| ())
    }

    /// SARK's SP metadata.
    pub fn sp_metadata(&self) -> String {
        let key = self.sp_cert_base64.as_ref().map_or(String::new(), |cert| {
            format!(
                r#"<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"#
            )
        });
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="{NS_METADATA}" xmlns:ds="{NS_DSIG}" entityID="{entity}"><md:SPSSODescriptor AuthnRequestsSigned="{signed}" WantAssertionsSigned="true" protocolSupportEnumeration="{NS_PROTOCOL}">{key}<md:NameIDFormat>{NAMEID_PERSISTENT}</md:NameIDFormat><md:AssertionConsumerService Binding="{BINDING_POST}" Location="{acs}" index="0" isDefault="true"/></md:SPSSODescriptor></md:EntityDescriptor>
"#,
            entity = escape_attr(&self.config.sp_entity_id),
            signed = self.sp_key.is_some(),
            acs = escape_attr(&self.config.acs_url),
        )
    }

    /// Starts a login: the IdP URL carrying a new AuthnRequest (signed when an SP key is
    /// configured); the request is remembered in the store for its response.
    pub async fn start(
        &self,
        node: &Core,
        browser: &str,
        relay: Option<url::Url>,
    ) -> Result<url::Url, Error> {
        let idp = self.idp(false).await?;
        let mut id_bytes = [0u8; 20];
        rand::thread_rng().fill_bytes(&mut id_bytes);
        let id = format!("_{}", hex::encode(id_bytes));
        let now = node.clock.now();
        let request = format!(
            r#"<samlp:AuthnRequest xmlns:samlp="{NS_PROTOCOL}" xmlns:saml="{NS_ASSERTION}" ID="{id}" Version="2.0" IssueInstant="{instant}" Destination="{destination}" AssertionConsumerServiceURL="{acs}" ProtocolBinding="{BINDING_POST}"><saml:Issuer>{issuer}</saml:Issuer><samlp:NameIDPolicy Format="{NAMEID_PERSISTENT}" AllowCreate="true"/></samlp:AuthnRequest>"#,
            instant = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            destination = escape_attr(&idp.sso_redirect),
            acs = escape_attr(&self.config.acs_url),
            issuer = escape_attr(&self.config.sp_entity_id),
        );
        let mut deflater =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflater
            .write_all(request.as_bytes())
            .map_err(|e| Error::internal(e.to_string()))?;
        let deflated = deflater
            .finish()
            .map_err(|e| Error::internal(e.to_string()))?;
        let mut url =
            url::Url::parse(&idp.sso_redirect).map_err(|e| Error::internal(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("SAMLRequest", &STANDARD.encode(deflated));
        if let Some(relay) = &relay {
            url.query_pairs_mut()
                .append_pair("RelayState", relay.as_str());
        }
        if let Some(key) = &self.sp_key {
            url = samael::crypto::sign_url(url, key)
                .map_err(|e| Error::internal(format!("signing the AuthnRequest: {e}")))?;
        }
        node.store
            .put_auth_request(&AuthRequestRecord {
                id: sha256_hex(&id),
                provider: "saml".into(),
                browser_hash: sha256_hex(browser),
                data: String::new(),
                redirect_uri: relay.map(String::from),
                created_at: now,
                expires_at: now + chrono::Duration::seconds(PENDING_SECONDS),
            })
            .await?;
        Ok(url)
    }

    /// Consumes a posted Response (decoded XML): signatures on the element used, issuer,
    /// audience, Destination, validity window, InResponseTo against a pending request,
    /// one-time use of the assertion, and the browser that started the login. Every refusal is
    /// audited.
    pub async fn consume(
        &self,
        node: &Core,
        xml: String,
        browser: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(ExternalIdentity, Option<url::Url>), Error> {
        let idp = self.idp(false).await?;
        let config = self.config.clone();
        let now = node.clock.now();
        let checked = tokio::task::spawn_blocking(move || verify(&xml, &idp, &config, now))
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        let verified = match checked {
            Ok(verified) => verified,
            Err(why) => return Err(refuse(node, ip, why).await),
        };
        if !node
            .store
            .use_assertion_id(&verified.assertion_id, verified.valid_until)
            .await?
        {
            let why = refusal("assertion_replayed", "this assertion was already used");
            return Err(refuse(node, ip, why).await);
        }
        let pending = node
            .store
            .take_auth_request(&sha256_hex(&verified.in_response_to), now)
            .await?
            .filter(|p| p.provider == "saml");
        let Some(pending) = pending else {
            let why = refusal(
                "unknown_request",
                "InResponseTo names no pending request of this SP",
            );
            return Err(refuse(node, ip, why).await);
        };
        // The response must come back to the browser that started the login (login CSRF).
        if !super::same_browser(browser, &pending.browser_hash) {
            let why = refusal(
                "browser_mismatch",
                "the login was started in another browser",
            );
            return Err(refuse(node, ip, why).await);
        }
        let first = |name: &str| {
            verified
                .attributes
                .get(name)
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let groups = verified
            .attributes
            .get(&self.config.groups_attribute)
            .cloned()
            .unwrap_or_default();
        let identity = ExternalIdentity {
            provider: "saml",
            subject: verified.name_id.clone(),
            name: first(&self.config.name_attribute).unwrap_or(verified.name_id),
            email: first(&self.config.email_attribute),
            role: self
                .config
                .role_mapping
                .role_for(groups.iter().map(String::as_str)),
        };
        let relay = pending
            .redirect_uri
            .as_deref()
            .map(url::Url::parse)
            .transpose()
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok((identity, relay))
    }
}

/// Audits a refused response and answers 401 `saml_login_failed`.
async fn refuse(node: &Core, ip: Option<IpAddr>, why: Refusal) -> Error {
    audit_refusal(node, ip, &why).await;
    Error::new(
        ErrorKind::Unauthenticated,
        "saml_login_failed",
        format!("the SAML response was refused ({})", why.reason),
    )
}

/// Audits a refused RelayState; answers `err` (a 400 naming the field).
pub async fn refuse_relay_state(node: &Core, ip: Option<IpAddr>, err: Error) -> Error {
    let why = refusal(
        "relay_state",
        "RelayState is off the allow-list or not the one the login started with",
    );
    audit_refusal(node, ip, &why).await;
    err
}

async fn audit_refusal(node: &Core, ip: Option<IpAddr>, why: &Refusal) {
    service::audit(
        node,
        "login_failed",
        "failure",
        "saml",
        ip,
        None,
        json!({"auth_method": "saml", "reason": why.reason, "detail": why.detail}),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_with_a_dtd_are_refused_before_parsing() {
        let xml = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#;
        assert!(matches!(parse(xml), Err(e) if e.contains("DTD")));
        assert!(parse("<not-closed>").is_err());
        // UTF-16 without a byte-order mark is ASCII with NULs: libxml would read a DTD the
        // string check cannot see.
        let utf16: String = "<!DOCTYPE r><r/>".chars().flat_map(|c| [c, '\0']).collect();
        assert!(matches!(parse(&utf16), Err(e) if e.contains("NUL")));
        let latin = r#"<?xml version="1.0" encoding="ISO-8859-1"?><r/>"#;
        assert!(matches!(parse(latin), Err(e) if e.contains("UTF-8")));
        assert!(parse(r#"<?xml version="1.0" encoding="utf-8"?><r/>"#).is_ok());
    }

    #[test]
    fn metadata_without_a_signing_key_or_redirect_endpoint_is_refused() {
        let md = |inner: &str| {
            format!(
                r#"<md:EntityDescriptor xmlns:md="{NS_METADATA}" xmlns:ds="{NS_DSIG}" entityID="https://idp"><md:IDPSSODescriptor protocolSupportEnumeration="{NS_PROTOCOL}">{inner}</md:IDPSSODescriptor></md:EntityDescriptor>"#
            )
        };
        let sso = format!(
            r#"<md:SingleSignOnService Binding="{BINDING_REDIRECT}" Location="https://idp/sso"/>"#
        );
        let key = r#"<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>AAEC
        AwQ=</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"#;
        let good = parse_metadata(&md(&format!("{key}{sso}")), None).unwrap();
        assert_eq!(good.entity_id, "https://idp");
        assert_eq!(good.sso_redirect, "https://idp/sso");
        assert_eq!(good.certs, vec![CertificateDer::from(vec![0, 1, 2, 3, 4])]);
        assert!(
            parse_metadata(&md(&sso), None)
                .unwrap_err()
                .contains("certificate")
        );
        assert!(
            parse_metadata(&md(key), None)
                .unwrap_err()
                .contains("HTTP-Redirect")
        );
    }
}
