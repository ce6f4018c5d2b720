//! From a parsed request to a turn: messages to the conversation and the user's turn, images
//! fetched (from public addresses only) and checked against the limits before they are
//! decoded.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::api::ApiError;
use super::parse::{Constraint, Limits, Parsed, Piece, Speaker};
use crate::media::{self, Image};
use crate::sampling::Sampling;
use crate::session::{GenerateOptions, Message, Role, Turn};
use crate::tools::{Tool, ToolFormat};

/// A request made ready for a slot.
pub struct Prepared {
    /// The conversation before the user's last message.
    pub history: Vec<Message>,
    /// The user's last message.
    pub turn: Turn,
    /// How to answer.
    pub options: GenerateOptions,
    /// Tools offered to the model.
    pub tools: Vec<Tool>,
    /// How the model writes tool calls, when tools are offered.
    pub tool_format: Option<ToolFormat>,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage in a last streamed chunk.
    pub include_usage: bool,
    /// The model name to answer with.
    pub model: Option<String>,
}

/// Fetches and decodes the images of a parsed request (each decoded image counted in
/// `decoded`), and turns it into a turn with its options; `tool_format` is how the chat
/// template's model writes tool calls (`None`: the template takes no tools).
pub fn prepare(
    parsed: Parsed,
    limits: &Limits,
    decoded: &AtomicU64,
    tool_format: Option<ToolFormat>,
) -> Result<Prepared, ApiError> {
    let tools = parsed.tools.as_ref();
    let format = match (tools, tool_format) {
        (None, _) => None,
        (Some(_), Some(f)) => Some(f),
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "tools: this model's chat template does not show the model tools; serve it with --jinja (the default) and its own template, or give a template that takes tools with --chat-template-file, or leave tools out",
            ))
        }
    };
    let marker = crate::ffi::Mtmd::marker();
    let mut messages = Vec::with_capacity(parsed.messages.len());
    for (i, m) in parsed.messages.into_iter().enumerate() {
        let role = match m.speaker {
            Speaker::System => Role::System,
            Speaker::User => Role::User,
            Speaker::Assistant => Role::Assistant,
            Speaker::Tool => Role::Tool,
        };
        let mut text = String::new();
        let mut images = Vec::new();
        let mut after_text = false;
        for (j, p) in m.pieces.into_iter().enumerate() {
            match p {
                Piece::Text(t) => {
                    if t.contains(&marker) {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}] holds the media marker as text; send images as image_url parts"
                        )));
                    }
                    if after_text {
                        text.push('\n');
                    }
                    text.push_str(&t);
                    after_text = true;
                }
                Piece::Image(url) => {
                    let image = load_url(&url, limits, decoded).map_err(|e| {
                        ApiError::invalid(format!("messages[{i}].content[{j}].image_url: {e}"))
                    })?;
                    text.push_str(&marker);
                    images.push(image);
                    after_text = false;
                }
            }
        }
        messages.push(Message {
            images,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
            ..Message::new(role, text)
        });
    }
    let last = messages
        .pop()
        .ok_or_else(|| ApiError::invalid("'messages' must hold at least one message"))?;
    let turn = Turn {
        system: None,
        text: last.text,
        images: last.images,
        steering: Some(parsed.steering),
        tool_call_id: last.tool_call_id,
    };
    let mut sampling = parsed.sampling;
    sampling.grammar = match parsed.constraint {
        None => None,
        Some(Constraint::Grammar(g)) => Some(g),
        Some(Constraint::Schema(schema)) => Some(
            crate::ffi::json_schema_to_grammar(&schema.to_string())
                .map_err(|e| ApiError::invalid(format!("the JSON schema: {e}")))?,
        ),
    };
    if let (Some(t), Some(f)) = (tools, format) {
        if let Some(forced) = t.forced() {
            sampling.grammar = Some(
                f.grammar(&forced, t.parallel)
                    .map_err(|e| ApiError::invalid(format!("tools: a parameters schema: {e}")))?,
            );
        }
    }
    Ok(Prepared {
        history: messages,
        turn,
        options: GenerateOptions {
            sampling: Sampling::Chain(sampling),
            max_tokens: Some(parsed.max_tokens),
            ignore_eos: parsed.ignore_eos,
            stop: parsed.stop,
            logprobs: parsed.logprobs,
        },
        tools: parsed.tools.map(|t| t.tools).unwrap_or_default(),
        tool_format: format,
        stream: parsed.stream,
        include_usage: parsed.include_usage,
        model: parsed.model,
    })
}

/// An image from a request's URL: a data URI, bare base64, `file://` below the media folder,
/// or `http(s)://` when fetching is allowed; checked against the size limits.
fn load_url(url: &str, limits: &Limits, decoded: &AtomicU64) -> Result<Image, String> {
    let bytes = if url.starts_with("data:") {
        media::decode_data_uri(url).map_err(|e| e.to_string())?
    } else if let Some(path) = url.strip_prefix("file://") {
        let root = limits
            .media_path
            .as_deref()
            .ok_or("file:// URLs are not allowed unless the server runs with --media-path DIR")?;
        read_below(root, path, limits.max_image_bytes)?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        if !limits.media_fetch {
            return Err(
                "image URLs are not fetched unless the server runs with --media-fetch".into(),
            );
        }
        fetch(url, limits.max_image_bytes)?
    } else {
        media::decode_base64(url)
            .map_err(|e| format!("not a data URI, URL or base64 image: {e}"))?
    };
    if bytes.len() > limits.max_image_bytes {
        return Err(format!(
            "the image has {} bytes, more than the {} this server accepts (--max-image-bytes)",
            bytes.len(),
            limits.max_image_bytes
        ));
    }
    // The declared size first: an image over the limit is refused before it is decoded.
    let (w, h) = media::dimensions(&bytes, "the image").map_err(|e| e.to_string())?;
    if w as u64 * h as u64 > limits.max_image_pixels {
        return Err(format!(
            "the image has {w}x{h} pixels, more than the {} this server accepts (--max-image-pixels)",
            limits.max_image_pixels
        ));
    }
    decoded.fetch_add(1, Ordering::Relaxed);
    let image = Image::decode(bytes, "the image").map_err(|e| e.to_string())?;
    Ok(image)
}

/// Reads `rel` below `root`, refusing paths that leave it.
fn read_below(root: &Path, rel: &str, max: usize) -> Result<Vec<u8>, String> {
    let rel = rel.trim_start_matches('/');
    let bad = || format!("file://{rel} is not a file below the media folder");
    if Path::new(rel)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad());
    }
    let root = root.canonicalize().map_err(|_| bad())?;
    let path = root.join(rel).canonicalize().map_err(|_| bad())?;
    if !path.starts_with(&root) || !path.is_file() {
        return Err(bad());
    }
    let len = path.metadata().map_err(|_| bad())?.len();
    if len > max as u64 {
        return Err(format!("file://{rel} is larger than --max-image-bytes"));
    }
    std::fs::read(&path).map_err(|e| format!("file://{rel}: {e}"))
}

/// The client's answer when an image URL cannot be fetched: the same for every failure, so
/// that the server cannot be used to probe which hosts and ports answer.
const FETCH_FAILED: &str = "cannot fetch the image URL: check that it is a public http(s) address that answers 200 with an image, without redirects, in 10 s";

/// Fetches an image URL with a 10 s time limit and `max` bytes at most, from public addresses
/// only: the resolver refuses a host with any loopback, private, link-local or otherwise
/// non-public address before a connection is made, ureq connects to the checked addresses
/// only, and redirects are not followed.
fn fetch(url: &str, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        PublicOnly::default(),
    );
    let mut resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::BadUri(m) if m == NOT_PUBLIC => NOT_PUBLIC.to_string(),
        _ => FETCH_FAILED.to_string(),
    })?;
    if resp.status() != 200 {
        return Err(FETCH_FAILED.into());
    }
    let mut bytes = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| FETCH_FAILED.to_string())?;
    Ok(bytes)
}

/// Why a fetch was refused before connecting.
const NOT_PUBLIC: &str = "the image URL's host is not a public address (--media-fetch fetches from public addresses only; send the image as a data URI)";

/// ureq's resolver, refusing hosts with a non-public address.
#[derive(Debug, Default)]
struct PublicOnly(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.0.resolve(uri, config, timeout)?;
        if addrs.iter().any(|a| !is_public(a.ip())) {
            return Err(ureq::Error::BadUri(NOT_PUBLIC.into()));
        }
        Ok(addrs)
    }
}

/// Whether `ip` is a global unicast address: not unspecified, loopback, private, shared
/// (CGNAT), link-local, multicast, broadcast, documentation, benchmarking or reserved, for IPv4
/// and for IPv6 (IPv4-mapped, -compatible, NAT64 and 6to4 addresses by their IPv4 part).
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    let v4 = |a: Ipv4Addr| {
        let [o0, o1, o2, _] = a.octets();
        !(a.is_unspecified()
            || o0 == 0
            || a.is_loopback()
            || a.is_private()
            || a.is_link_local()
            || a.is_multicast()
            || a.is_broadcast()
            || a.is_documentation()
            || o0 >= 240
            || (o0 == 100 && (64..128).contains(&o1))
            || (o0 == 198 && (18..20).contains(&o1))
            || (o0 == 192 && o1 == 0 && o2 == 0))
    };
    match ip {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(a) => {
            let s = a.segments();
            let embedded = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if let Some(m) = a.to_ipv4_mapped() {
                return v4(m);
            }
            if s[..6] == [0; 6] {
                // ::/96, IPv4-compatible (:: and ::1 among them).
                return !a.is_unspecified() && !a.is_loopback() && v4(embedded(s[6], s[7]));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return v4(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return v4(embedded(s[1], s[2]));
            }
            !(a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2001 && s[1] == 0)
                || s[..4] == [0x100, 0, 0, 0]
                || s[0] & 0xe000 != 0x2000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn only_global_addresses_are_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a} counted as public");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            assert!(is_public(a.parse().unwrap()), "{a} counted as not public");
        }
    }
}
