# The prototype's targets, so its run commands keep working:
#   make run-server SERVER_ARGS="--server_id 1 --port 5001 --db_file=data/chat1.db"
#   make run-client CLIENT_ARGS="--servers 127.0.0.1:5001 login alice"
# and `make test`, which installs what the browser tests need (Debian's chromium and
# chromium-driver) when it is missing, then runs every test.
SERVER_ARGS ?=
CLIENT_ARGS ?= --help

.PHONY: run-server run-client build test browser

run-server:
	cargo run --release -p jochat-node --bin jochat-node -- $(SERVER_ARGS)

run-client:
	cargo run --release -p jochat-cli --bin jochat -- $(CLIENT_ARGS)

build:
	cargo build --workspace --release

browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		echo "installing Debian's chromium and chromium-driver for the browser tests"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver; \
	fi

test: browser
	cargo test --workspace
