// emu/tests/check.h: the C++ tests' harness (isa_test, sanitize_test, kernels_smoke): CHECK,
// expect_error and the summary line the Rust drivers look for ("N checks, 0 failures").
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "../runtime.h"

static int failures = 0, checks = 0;
static const int unbuffered = std::setvbuf(stdout, nullptr, _IOLBF, 0);
#define CHECK(c, ...)                                        \
    do {                                                     \
        checks++;                                            \
        if (!(c)) {                                          \
            failures++;                                      \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            std::printf(__VA_ARGS__);                        \
            std::printf("\n");                               \
        }                                                    \
    } while (0)

// Runs f, which must throw emu::Error whose text contains every one of `parts`.
[[maybe_unused]] static void expect_error(const char* what, const std::function<void()>& f, std::vector<std::string> parts) {
    try {
        f();
        CHECK(false, "%s: no error reported", what);
    } catch (const emu::Error& e) {
        std::string m = e.what();
        for (auto& p : parts) CHECK(m.find(p) != std::string::npos, "%s: report lacks \"%s\":\n%s", what, p.c_str(), m.c_str());
        std::printf("ok: %s reported:\n  %s\n", what, m.c_str());
    }
}

// The summary line and the exit status.
static int summary(const char* name) {
    std::printf("%s: %d checks, %d failures\n", name, checks, failures);
    return failures ? 1 : 0;
}
