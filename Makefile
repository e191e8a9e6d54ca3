# labman — one Makefile. See README.md.
#   make            build everything into build/
#   make check      unit, conformance, fuzz-corpus and integration tests
#   make run        the demo: labman-devllm + labmand with examples/demo.toml
#   make bench      benchmarks (bench/*.sh), printing tables
#   V=1 shows commands; SAN=1 builds with ASan+UBSan (into build/san); CI=true adds -Werror.

PREFIX ?= /usr/local
DESTDIR ?=
CC ?= cc
PYTHON ?= /usr/bin/python3
VERSION := 0.1.0

ifeq ($(SAN),1)
BUILD ?= build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD ?= build
SANFLAGS :=
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

PKGS := libevent libevent_openssl libcurl openssl libsodium jansson sqlite3 libsystemd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
ifeq ($(CI),true)
WARN += -Werror
endif

CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -DLM_VERSION='"$(VERSION)"' $(WARN) $(CFLAGS) $(SANFLAGS) \
	-Isrc $(PKG_CFLAGS) -MMD -MP
ALL_LDFLAGS := $(LDFLAGS) $(SANFLAGS)
# libhttp-parser has no pkg-config file.
LIBS := $(PKG_LIBS) -lhttp_parser -lm

# Every directory under src/ is a library module, except those holding a main().
BIN_DIRS := labmand labman devllm toml-decoder
LIB_DIRS := $(filter-out $(BIN_DIRS),$(notdir $(wildcard src/*)))
LIB_SRCS := $(foreach d,$(LIB_DIRS),$(wildcard src/$(d)/*.c))
LIB_OBJS := $(LIB_SRCS:src/%.c=$(BUILD)/obj/%.o)
LIB := $(BUILD)/liblabman.a

objs_of = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(wildcard src/$(1)/*.c))

BINS := $(BUILD)/labmand $(BUILD)/labman $(BUILD)/labman-devllm $(BUILD)/toml-decoder

UNIT_SRCS := $(wildcard tests/unit/*_test.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

FUZZ_SRCS := $(wildcard tests/fuzz/*_fuzz.c)
FUZZ_REPLAY := $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%-replay)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)
FUZZ_SECONDS ?= 60

# The C side of the yamux interop test against hashicorp/yamux
# (tests/conformance/yamux/run.sh builds the Go side itself).
YAMUX_CPEER := $(BUILD)/tests/yamux-cpeer

.PHONY: all check unit conformance fuzz-replay integ run bench install clean deps fuzz
.DEFAULT_GOAL := all

all: $(BINS)

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJS)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/labmand: $(call objs_of,labmand) $(LIB)
$(BUILD)/labman: $(call objs_of,labman) $(LIB)
$(BUILD)/labman-devllm: $(call objs_of,devllm) $(LIB)
$(BUILD)/toml-decoder: $(call objs_of,toml-decoder) $(LIB)

$(BINS):
	@mkdir -p $(@D)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIB)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(LIB) $(LIBS) -lcmocka

# Fuzz targets: under libFuzzer for `make fuzz`, and with a small replay
# main() for `make check`, which runs every saved corpus input once.
$(BUILD)/fuzz/%-replay: tests/fuzz/%.c tests/fuzz/replay.c $(LIB)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< tests/fuzz/replay.c $(LIB) $(LIBS)

$(YAMUX_CPEER): tests/conformance/yamux/cpeer.c $(LIB)
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(LIB) $(LIBS)

build/fuzz/%: tests/fuzz/%.c $(LIB_SRCS)
	@mkdir -p $(@D)
	$(Q)clang -std=c11 -D_GNU_SOURCE -g -O1 -Isrc $(PKG_CFLAGS) \
		-fsanitize=fuzzer,address,undefined -o $@ $< $(LIB_SRCS) $(LIBS)

deps:
	$(Q)scripts/deps.sh

check: deps
	$(Q)$(MAKE) --no-print-directory all $(UNIT_BINS) $(FUZZ_REPLAY) $(YAMUX_CPEER)
	$(Q)SAN=$(SAN) scripts/check.sh "$(BUILD)"

unit: $(UNIT_BINS)
	$(Q)for t in $(UNIT_BINS); do $$t || exit 1; done

conformance: all deps $(YAMUX_CPEER)
	$(Q)$(PYTHON) tests/conformance/toml/run.py $(BUILD)/toml-decoder
	$(Q)tests/conformance/yamux/run.sh $(BUILD)
	$(Q)cd tests/conformance/openai && LABMAN_BUILD=$(abspath $(BUILD)) node --test --test-timeout=60000

fuzz-replay: $(FUZZ_REPLAY)
	$(Q)for f in $(FUZZ_REPLAY); do n=$$(basename $$f -replay); $$f tests/fuzz/corpus/$$n || exit 1; done

integ: all
	$(Q)LABMAN_BUILD=$(BUILD) $(PYTHON) -m pytest -q tests/integ

fuzz: $(FUZZ_BINS)
	$(Q)for f in $(FUZZ_BINS); do n=$$(basename $$f); mkdir -p build/fuzz/corpus-$$n; \
		$$f -max_total_time=$(FUZZ_SECONDS) -timeout=5 -rss_limit_mb=1024 \
		build/fuzz/corpus-$$n tests/fuzz/corpus/$$n || exit 1; done

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)scripts/run-demo.sh "$(BUILD)"

bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)for b in bench/*.sh; do $$b || exit 1; done

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/doc/labman
	install -m 0755 $(BUILD)/labmand $(BUILD)/labman $(BUILD)/labman-devllm $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 docs/labmand.service examples/full.toml examples/demo.toml $(DESTDIR)$(PREFIX)/share/doc/labman/

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(YAMUX_CPEER).d $(foreach d,$(BIN_DIRS),$(patsubst src/%.c,$(BUILD)/obj/%.d,$(wildcard src/$(d)/*.c)))
