//! Gzip by the runtime's own engine (`CompressionStream` and
//! `DecompressionStream`), for the ledger archive's segments: a compressor
//! linked into the wasm would cost about a tenth of its size.
//!
//! Each call is one gzip member. Decompression checks the member's CRC-32
//! and length (a corrupt or cut member is an error) and stops past a limit,
//! so a hostile object cannot exhaust memory.

use wasm_bindgen::prelude::*;
use worker::{Error, Result};

#[wasm_bindgen(inline_js = r#"
export async function gzip_member(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function gunzip_member(bytes, limit) {
  const reader = new Blob([bytes]).stream()
    .pipeThrough(new DecompressionStream("gzip")).getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel();
      throw new Error(`decompresses to more than ${limit} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}
"#)]
extern "C" {
    // `bytes` is copied into a Blob before the first await: the view into
    // wasm memory may not outlive the call.
    #[wasm_bindgen(catch)]
    async fn gzip_member(bytes: &[u8]) -> std::result::Result<JsValue, JsValue>;

    #[wasm_bindgen(catch)]
    async fn gunzip_member(bytes: &[u8], limit: f64) -> std::result::Result<JsValue, JsValue>;
}

/// `text` as one gzip member.
pub async fn compress(text: &[u8]) -> Result<Vec<u8>> {
    let member = gzip_member(text).await.map_err(|e| failed("gzip", e))?;
    Ok(js_sys::Uint8Array::new(&member).to_vec())
}

/// The text of the gzip member `bytes`, at most `limit_bytes` of it.
pub async fn decompress(bytes: &[u8], limit_bytes: u64) -> Result<Vec<u8>> {
    let text = gunzip_member(bytes, limit_bytes as f64)
        .await
        .map_err(|e| failed("gunzip", e))?;
    Ok(js_sys::Uint8Array::new(&text).to_vec())
}

fn failed(what: &str, err: JsValue) -> Error {
    let reason = match err.dyn_into::<js_sys::Error>() {
        Ok(err) => String::from(err.message()),
        Err(other) => other.as_string().unwrap_or_default(),
    };
    Error::RustError(format!("{what} failed: {reason}"))
}
