//! One protocol, two languages: the Python package (`python/`) must send Redis exactly what
//! the Rust crates send. The Lua scripts (the same `protocol/lua/` files, composed the same
//! way), every key name and its hash slot (awkward group and session names included), and
//! the msgpack of channel messages, replies and outboxes — a Python worker finishing a Rust
//! worker's half-committed message reads its outbox, and the other way round. The Python
//! side is `tests/python/conformance.py`.

use std::io::Write;
use std::process::{Command, Stdio};

use switchyard_protocol::keys::slot;
use switchyard_protocol::{
    decode, encode, scripts, Action, ChannelMessage, ConnectScope, Event, HttpRequest, Keys, Outbox, OutboxSend,
    Payload, Reply,
};
use switchyard_tests::python::{python, python_path};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

const NAMES: &[&str] = &[
    "lobby",
    "",
    "a{b",
    "}x",
    "{y}",
    "~sneaky",
    "room:1",
    "if-1!42",
    "ünï code",
];

fn messages() -> Vec<ChannelMessage> {
    let events = [
        Event::Connect(ConnectScope {
            headers: vec![("host".into(), "x".into())],
            client: "127.0.0.1:5000".into(),
            subprotocols: vec!["chat.v1".into()],
        }),
        Event::Receive(Payload::text("hello")),
        Event::Receive(Payload::bytes(vec![0u8, 159, 255])),
        Event::Disconnect { code: 1001 },
        Event::Drain,
        Event::HttpRequest(HttpRequest {
            method: "POST".into(),
            headers: vec![("content-type".into(), "text/plain".into())],
            client: "[::1]:5000".into(),
            body: vec![0u8, 1, 255].into(),
            more_body: true,
        }),
        Event::HttpDisconnect,
    ];
    events
        .into_iter()
        .map(|event| ChannelMessage::new("if1!7".into(), 3, "/ws/chat/".into(), "a=b".into(), event))
        .collect()
}

#[test]
fn python_and_rust_send_redis_the_same_scripts_keys_and_messages() {
    let rust_outbox = Outbox {
        v: 1,
        reply: encode(&Reply::new(
            3,
            Some(5),
            vec![Action::Send(Payload::text("{\"count\":5}"))],
        ))
        .into(),
        groups: vec![
            OutboxSend {
                group: "chat".into(),
                kind: "t".into(),
                data: b"hi".to_vec().into(),
            },
            OutboxSend {
                group: "a{b".into(),
                kind: "b".into(),
                data: vec![0u8, 255].into(),
            },
            OutboxSend {
                group: "g".into(),
                kind: "j".into(),
                data: b"{\"x\":1}".to_vec().into(),
            },
        ],
    };
    let request = serde_json::json!({
        "names": NAMES,
        "messages": messages().iter().map(|m| hex(&encode(m))).collect::<Vec<_>>(),
        "outbox": hex(&encode(&rust_outbox)),
    });
    let mut child = Command::new(python())
        .arg(switchyard_tests::python::repo_root().join("tests/python/conformance.py"))
        .env("PYTHONPATH", python_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "conformance.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    // The scripts, byte for byte as each side sends them (so the same SHA1 too).
    let rust_scripts = [
        ("group_send", scripts::group_send()),
        ("commit_session", scripts::COMMIT_SESSION.to_owned()),
        ("commit_groups", scripts::commit_groups()),
        ("commit_reply", scripts::COMMIT_REPLY.to_owned()),
        ("stream_owner", scripts::STREAM_OWNER.to_owned()),
        ("announce_shards", scripts::ANNOUNCE_SHARDS.to_owned()),
        ("group_history", scripts::GROUP_HISTORY.to_owned()),
    ];
    assert_eq!(
        answer["scripts"].as_object().unwrap().len(),
        rust_scripts.len(),
        "script sets differ"
    );
    for (name, text) in rust_scripts {
        assert_eq!(
            answer["scripts"][name].as_str(),
            Some(text.as_str()),
            "script {name} differs between Rust and Python"
        );
    }

    // Key names and slots.
    let keys = Keys::new("sy");
    for name in NAMES {
        let rust: Vec<String> = vec![
            keys.session(name),
            keys.outbox(name, "if-2!7"),
            keys.group_channel(name),
            keys.group_seq(name),
            keys.group_sent(name, "if!1"),
            keys.group_members(name),
        ];
        let python = answer["keys"][*name].as_array().unwrap();
        for (rust_key, pair) in rust.iter().zip(python) {
            assert_eq!(pair[0].as_str(), Some(rust_key.as_str()), "name {name:?}");
            assert_eq!(
                pair[1].as_u64(),
                Some(u64::from(slot(rust_key.as_bytes()))),
                "slot of {rust_key}"
            );
        }
    }
    let fixed = [
        keys.channel_stream("chat", 2),
        keys.channel_shards(),
        keys.reply_stream("if-1a2b"),
        keys.connection_seqs("if-1a2b"),
        keys.http_body("if-1a2b", 7),
        keys.dead_letter(),
        keys.worker_alive("w-1"),
        keys.workers_index(),
    ];
    for (rust_key, python_key) in fixed.iter().zip(answer["fixed"].as_array().unwrap()) {
        assert_eq!(python_key.as_str(), Some(rust_key.as_str()));
    }

    // Channel messages Rust encodes, as Python reads them.
    let decoded = answer["messages"].as_array().unwrap();
    for (message, python) in messages().iter().zip(decoded) {
        assert_eq!(python["type"], message.event.type_name());
        assert_eq!(python["reply"], "if1!7");
        assert_eq!(python["seq"], 3);
        assert_eq!(python["path"], "/ws/chat/");
        assert_eq!(python["query"], "a=b");
        match &message.event {
            Event::Connect(scope) => {
                assert_eq!(python["headers"], serde_json::json!([["host", "x"]]));
                assert_eq!(python["client"], scope.client.as_str());
                assert_eq!(python["subprotocols"], serde_json::json!(["chat.v1"]));
            }
            Event::Receive(Payload { text: Some(text), .. }) => assert_eq!(python["text"], text.as_str()),
            Event::Receive(Payload { bytes: Some(bytes), .. }) => assert_eq!(python["bytes"], hex(bytes)),
            Event::Disconnect { code } => assert_eq!(python["code"], *code),
            Event::HttpRequest(request) => {
                assert_eq!(python["method"], "POST");
                assert_eq!(python["body"], hex(&request.body));
                assert_eq!(python["more_body"], true);
                assert_eq!(python["client"], "[::1]:5000");
            }
            _ => {}
        }
    }

    // A Rust outbox read by Python: the stored reply and group sends.
    assert_eq!(
        answer["outbox"]["reply"].as_str(),
        Some(hex(&rust_outbox.reply).as_str())
    );
    let groups: Vec<(String, String, String)> = rust_outbox
        .groups
        .iter()
        .map(|g| (g.group.clone(), g.kind.clone(), hex(&g.data)))
        .collect();
    let python_groups: Vec<(String, String, String)> =
        serde_json::from_value(answer["outbox"]["groups"].clone()).unwrap();
    assert_eq!(python_groups, groups);

    // A Python reply and outbox read by Rust.
    let reply: Reply = decode(&unhex(answer["reply"].as_str().unwrap())).expect("Rust decodes Python's reply");
    assert_eq!(reply.conn, 9);
    assert_eq!(reply.done, Some(4));
    assert_eq!(
        reply.actions,
        vec![
            Action::Accept {
                subprotocol: Some("chat.v1".into())
            },
            Action::Send(Payload::text("hi")),
            Action::Send(Payload::bytes(vec![0u8, 255])),
            Action::Close {
                code: 4000,
                reason: "bye".into()
            },
            Action::GroupAdd {
                group: "lobby".into(),
                since: None,
                epoch: None,
                plain: false,
            },
            Action::GroupAdd {
                group: "room:2".into(),
                since: Some(3),
                epoch: Some("17".into()),
                plain: true,
            },
            Action::GroupDiscard { group: "lobby".into() },
            Action::HttpResponseStart {
                status: 201,
                headers: vec![("content-type".into(), "text/plain".into())]
            },
            Action::HttpResponseBody {
                body: b"ok".to_vec().into(),
                more_body: false
            },
        ]
    );
    let outbox: Outbox = decode(&unhex(answer["own_outbox"].as_str().unwrap())).expect("Rust decodes Python's outbox");
    assert_eq!(&outbox.reply[..], unhex(answer["reply"].as_str().unwrap()).as_slice());
    let kinds: Vec<(&str, &str, &[u8])> = outbox
        .groups
        .iter()
        .map(|g| (g.group.as_str(), g.kind.as_str(), &g.data[..]))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("lobby", "t", &b"t"[..]),
            ("room:1", "b", &[1u8][..]),
            ("g", "j", &b"{\"a\":1}"[..])
        ]
    );
}
