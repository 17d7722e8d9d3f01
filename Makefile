# Loom: plain GNU make, everything built under $(BUILD).
#   make                 build libraries, services, tools and unit tests
#   make SAN=address,undefined   the same with sanitizers, in build/san
#   make test            install what is missing, build, run unit + integration tests
#   make up / make down  a whole platform on this machine (tools/loom-dev)
#   make bench           benchmarks (tables, never pass/fail)
#   make fuzz            bounded fuzzing runs
#   make check-format    clang-format check of every C file
#   make check-fresh     tools/install-deps, make up and the README's tour in a fresh
#                        minimal Debian 12 root (tools/check-fresh; root, a few minutes)

SHELL := /bin/bash
CC ?= cc
SAN ?=
ifeq ($(SAN),)
BUILD ?= build
else
BUILD ?= build/san
endif

PKGS := libpq libnats jansson libmicrohttpd libcurl openssl libprotobuf-c libarchive
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wpedantic -Wshadow -Wformat=2 -Wformat-security \
	-Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes -Wold-style-definition \
	-Wwrite-strings -Wvla -Wundef -Wno-format-nonliteral -fno-common
OPT ?= -O2 -g
CFLAGS_BASE := -std=c17 -D_GNU_SOURCE -pthread $(OPT) -fstack-protector-strong \
	-I. -Icommon -I$(BUILD)/gen $(PKG_CFLAGS)
ifneq ($(SAN),)
CFLAGS_BASE += -fsanitize=$(SAN) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SAN)
endif
CFLAGS := $(CFLAGS_BASE) $(WARN) $(EXTRA_CFLAGS)
LDLIBS := $(PKG_LIBS) -pthread -lm

PROTOS := $(wildcard proto/loom/v1/*.proto)
GEN_C := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
GEN_H := $(GEN_C:.c=.h)
GEN_O := $(GEN_C:.c=.o)

COMMON_SRC := $(wildcard common/*.c)
COMMON_O := $(patsubst %.c,$(BUILD)/obj/%.o,$(COMMON_SRC))
LIB := $(BUILD)/lib/libloom.a

SERVICES := $(notdir $(patsubst %/,%,$(dir $(wildcard services/*/main.c))))
SERVICE_BINS := $(addprefix $(BUILD)/bin/loom-,$(SERVICES))
SERVICE_LIBS := $(patsubst %,$(BUILD)/lib/libloom-%.a,$(SERVICES))
TOOLS := $(notdir $(patsubst %/,%,$(dir $(wildcard tools/*/main.c))))
TOOL_BINS := $(addprefix $(BUILD)/bin/,$(TOOLS))

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

.PHONY: all deps test unit integration up down bench fuzz check-format check-fresh format clean
.SECONDARY:

all: $(SERVICE_BINS) $(TOOL_BINS) $(UNIT_BINS)

# --- generated protobuf code --------------------------------------------------
$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

# generated code is not ours: compile it without the strict warnings
$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c $(GEN_H)
	$(CC) $(CFLAGS_BASE) -w -c -o $@ $<

# --- objects --------------------------------------------------------------------
$(BUILD)/obj/%.o: %.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(LIB): $(COMMON_O) $(GEN_O)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# services/<name>/main.c + the rest of services/<name>/*.c (as an archive that
# unit tests can link too) -> build/bin/loom-<name>
define service_rule
$(BUILD)/lib/libloom-$(1).a: $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out services/$(1)/main.c,$(wildcard services/$(1)/*.c)))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	ar rcs $$@ $$^
$(BUILD)/bin/loom-$(1): $(BUILD)/obj/services/$(1)/main.o $(BUILD)/lib/libloom-$(1).a $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rule,$(s))))

# each tools/<name>/*.c links into build/bin/<name>
define tool_rule
$(BUILD)/bin/$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/$(1)/*.c)) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rule,$(t))))

# unit tests: tests/unit/test_<x>.c, linked with the services' archives (a
# test pulls in only the objects it calls), libloom and cmocka
$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(SERVICE_LIBS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< -Wl,--start-group $(SERVICE_LIBS) $(LIB) -Wl,--end-group $(LDLIBS) -lcmocka

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# --- running ---------------------------------------------------------------------
deps:
	@tools/install-deps

# Unit tests run under ASan and UBSan; integration tests run the plain build
# against real PostgreSQL, NATS, registry and runc.
test: deps
	$(MAKE) check-format
	$(MAKE) all
	$(MAKE) SAN=address,undefined unit
	$(MAKE) integration

unit: $(UNIT_BINS)
	@set -e; fail=0; for t in $(UNIT_BINS); do \
		echo "# $$t"; \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
			$$t 2>&1 || fail=1; \
	done; exit $$fail

integration: all
	LOOM_BUILD=$(BUILD) timeout --kill-after=30 2400 prove -v --timer tests/integration/

up: deps
	$(MAKE) all
	tools/loom-dev up

down:
	tools/loom-dev down

bench: all
	@set -e; for b in tests/bench/*.sh; do [ -x "$$b" ] && LOOM_BUILD=$(BUILD) "$$b"; done

fuzz:
	tests/fuzz/run $(FUZZ_SECONDS)

# A new user's first steps on a fresh Debian 12: nothing there but what
# tools/install-deps installs (mmdebstrap on this machine builds the root).
check-fresh: deps
	tools/check-fresh

CHECK_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null || find common services tools tests -name '*.[ch]')
check-format:
	@clang-format --dry-run --Werror $(CHECK_FILES)

format:
	@clang-format -i $(CHECK_FILES)

clean:
	rm -rf build
