//! The fixed newstyle handshake: options until EXPORT_NAME or GO (or ABORT).

use std::io::{Read, Write};

use super::connection::{bad, Connection, Io};
use super::protocol::*;

impl<S: Read + Write> Connection<'_, S> {
    /// The fixed newstyle handshake. Ok(true): go to transmission.
    /// The handshake: greet, then answer options until the client asks to
    /// transmit (true) or aborts (false).
    pub(super) fn handshake(&mut self) -> Io<bool> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.s.write_all(&hello)?;
        let client = self.u32()?;
        if client & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
            return Err(bad("the client does not speak fixed newstyle"));
        }
        if client & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
            return Err(bad("unknown client flags"));
        }
        self.no_zeroes = client & u32::from(FLAG_NO_ZEROES) != 0;
        loop {
            if self.u64()? != IHAVEOPT {
                return Err(bad("bad option magic"));
            }
            let option = self.u32()?;
            let len = self.u32()?;
            if len > MAX_OPTION {
                // Too big to read: say so and drop the connection.
                let _ = self.opt_reply(option, REP_ERR_TOO_BIG, b"option too long");
                return Err(bad("option too long"));
            }
            let mut data = vec![0u8; len as usize];
            self.s.read_exact(&mut data)?;
            match self.option(option, &data)? {
                Next::Option => {}
                Next::Transmit => return Ok(true),
                Next::Abort => return Ok(false),
            }
        }
    }

    /// Answer one option.
    fn option(&mut self, option: u32, data: &[u8]) -> Io<Next> {
        match option {
            OPT_EXPORT_NAME => {
                if !self.known(data) {
                    return Err(bad("unknown export name"));
                }
                let mut m = Vec::new();
                m.extend_from_slice(&self.export.size().to_be_bytes());
                m.extend_from_slice(&self.export_flags().to_be_bytes());
                if !self.no_zeroes {
                    m.extend_from_slice(&[0u8; 124]);
                }
                self.s.write_all(&m)?;
                return Ok(Next::Transmit);
            }
            OPT_ABORT => {
                let _ = self.opt_reply(option, REP_ACK, &[]);
                return Ok(Next::Abort);
            }
            OPT_LIST => self.list(option, data)?,
            OPT_INFO | OPT_GO => return self.info_or_go(option, data),
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                self.opt_reply(option, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")?
            }
            OPT_STRUCTURED_REPLY => {
                self.structured = true;
                self.opt_reply(option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data)?,
            _ => self.opt_reply(option, REP_ERR_UNSUP, b"option not supported")?,
        }
        Ok(Next::Option)
    }

    /// LIST: the one export's name.
    fn list(&mut self, option: u32, data: &[u8]) -> Io<()> {
        if !data.is_empty() {
            return self.opt_reply(option, REP_ERR_INVALID, b"LIST takes no data");
        }
        let name = self.export.name.clone();
        let mut m = (name.len() as u32).to_be_bytes().to_vec();
        m.extend_from_slice(name.as_bytes());
        self.opt_reply(option, REP_SERVER, &m)?;
        self.opt_reply(option, REP_ACK, &[])
    }

    /// INFO or GO: the export's size, flags and block sizes; GO then transmits.
    fn info_or_go(&mut self, option: u32, data: &[u8]) -> Io<Next> {
        let Some(name) = parse_info(data) else {
            self.opt_reply(option, REP_ERR_INVALID, b"malformed INFO/GO request")?;
            return Ok(Next::Option);
        };
        if !self.known(name) {
            self.opt_reply(option, REP_ERR_UNKNOWN, b"no such export")?;
            return Ok(Next::Option);
        }
        let mut m = INFO_EXPORT.to_be_bytes().to_vec();
        m.extend_from_slice(&self.export.size().to_be_bytes());
        m.extend_from_slice(&self.export_flags().to_be_bytes());
        self.opt_reply(option, REP_INFO, &m)?;
        let mut m = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&(self.export.chunk_bytes().min(u64::from(MAX_READ)) as u32).to_be_bytes());
        m.extend_from_slice(&MAX_READ.to_be_bytes());
        self.opt_reply(option, REP_INFO, &m)?;
        self.opt_reply(option, REP_ACK, &[])?;
        Ok(if option == OPT_GO { Next::Transmit } else { Next::Option })
    }

    /// LIST_META_CONTEXT or SET_META_CONTEXT: only base:allocation exists.
    fn meta_context(&mut self, option: u32, data: &[u8]) -> Io<()> {
        let Some((name, queries)) = parse_meta(data) else {
            return self.opt_reply(option, REP_ERR_INVALID, b"malformed meta context request");
        };
        if option == OPT_SET_META_CONTEXT && !self.structured {
            return self.opt_reply(option, REP_ERR_INVALID, b"structured replies first");
        }
        if !self.known(name) {
            return self.opt_reply(option, REP_ERR_UNKNOWN, b"no such export");
        }
        let wants = (option == OPT_LIST_META_CONTEXT && queries.is_empty())
            || queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes() || *q == b"base:");
        if option == OPT_SET_META_CONTEXT {
            self.meta = wants;
        }
        if wants {
            let mut m = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
            m.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.opt_reply(option, REP_META_CONTEXT, &m)?;
        }
        self.opt_reply(option, REP_ACK, &[])
    }

    pub(super) fn opt_reply(&mut self, option: u32, kind: u32, data: &[u8]) -> Io<()> {
        let mut m = Vec::with_capacity(20 + data.len());
        m.extend_from_slice(&REP_MAGIC.to_be_bytes());
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m)
    }
}

/// INFO/GO payload: u32 name length, name, u16 count, count × u16 requests.
fn parse_info(d: &[u8]) -> Option<&[u8]> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let rest = d.get(4 + n..)?;
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    (rest.len() == 2 + 2 * count).then_some(name)
}

/// META_CONTEXT payload: u32 name length, name, u32 count, count × (u32 length, query).
fn parse_meta(d: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let n = u32::from_be_bytes(d.get(..4)?.try_into().ok()?) as usize;
    let name = d.get(4..4usize.checked_add(n)?)?;
    let mut rest = d.get(4 + n..)?;
    let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    rest = &rest[4..];
    let mut queries = Vec::new();
    for _ in 0..count {
        let l = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        queries.push(rest.get(4..4usize.checked_add(l)?)?);
        rest = &rest[4 + l..];
    }
    rest.is_empty().then_some((name, queries))
}

/// What the handshake does after an option.
enum Next {
    /// Read the next option.
    Option,
    /// Go to transmission.
    Transmit,
    /// The client aborted.
    Abort,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn option_payloads_parse_or_are_refused() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_info(&d), Some(&b"abc"[..]));
        assert_eq!(parse_info(&d[..d.len() - 1]), None);
        assert_eq!(parse_info(&[0xff, 0xff, 0xff, 0xff]), None);
        let mut m = 0u32.to_be_bytes().to_vec();
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta(&m), Some((&b""[..], vec![&b"base:allocation"[..]])));
        m.push(0);
        assert_eq!(parse_meta(&m), None);
    }
}
