# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv sshd browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,tflite]'
	touch $(STAMP)

venv: $(STAMP)

# The tests start real OpenSSH servers on 127.0.0.1: install sshd when it is missing.
sshd:
	@if [ ! -x /usr/sbin/sshd ]; then \
		echo "installing openssh-server (needed by the SSH tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; \
	fi

# The HTML report tests render pages in headless Chromium: install Debian's when it is missing
# (without apt or root, those tests are skipped and say why).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium (needed by the HTML report tests)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the tests that render HTML in it will be skipped"; \
	fi

test: $(STAMP) sshd browser
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/edgekit demo

bench: $(STAMP) sshd
	$(PY) benchmarks/quantize_vs_ort.py
	$(PY) benchmarks/push_vs_scp.py

clean:
	rm -rf $(VENV) out dist demo-work bench-results
