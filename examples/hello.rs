//! A hello-world hyper server with no Python: the ceiling the load
//! benchmark compares fastserve against, on the same runtime settings
//! (current-thread tokio, HTTP/1.1 keep-alive, nodelay).
//!
//! Usage: `hello --host 127.0.0.1 --port 8000`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"Hello, world!";

fn main() -> std::io::Result<()> {
    let mut host = String::from("127.0.0.1");
    let mut port = String::from("8000");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next().unwrap_or(host),
            "--port" => port = args.next().unwrap_or(port),
            other => {
                eprintln!("unknown argument {other:?}: expected --host ADDR or --port N");
                std::process::exit(2);
            }
        }
    }
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                response
                    .headers_mut()
                    .insert("content-type", http::HeaderValue::from_static("text/plain"));
                Ok::<_, Infallible>(response)
            });
            // Clients that hang up mid-request are routine here.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
