# The prototype's targets, so its run commands keep working:
#   make run-server SERVER_ARGS="--server_id 1 --port 5001 --db_file=data/chat1.db"
#   make run-client CLIENT_ARGS="--servers 127.0.0.1:5001 login alice"
SERVER_ARGS ?=
CLIENT_ARGS ?= --help

.PHONY: run-server run-client build test

run-server:
	cargo run --release --bin jochat-node -- $(SERVER_ARGS)

run-client:
	cargo run --release --bin jochat -- $(CLIENT_ARGS)

build:
	cargo build --workspace --release

test:
	cargo test --workspace
