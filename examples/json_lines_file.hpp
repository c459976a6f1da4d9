// A real sink for the examples: a batch of audit events appended to a file as JSON lines with a
// single write(2), optionally made durable with fdatasync(2) before the call returns.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <span>
#include <string>
#include <system_error>

namespace examples {

struct AuditEvent {
  unsigned user = 0;
  unsigned long seq = 0;
  std::string verb;
};

inline void append_json(std::string& out, const AuditEvent& e) {
  out += "{\"user\":";
  out += std::to_string(e.user);
  out += ",\"seq\":";
  out += std::to_string(e.seq);
  out += ",\"verb\":\"";
  out += e.verb;  // the examples' verbs need no escaping
  out += "\"}";
}

class JsonLinesFile {
 public:
  // Truncates `path`. With `durable`, each batch is fdatasync'ed before process_events returns.
  explicit JsonLinesFile(std::string path, bool durable = false)
      : path_(std::move(path)),
        durable_(durable),
        fd_(::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "open " + path_);
  }
  ~JsonLinesFile() { ::close(fd_); }
  JsonLinesFile(const JsonLinesFile&) = delete;
  JsonLinesFile& operator=(const JsonLinesFile&) = delete;

  // Returns false (the batch is reported as failed) if the write or the sync fails.
  bool process_events(std::span<AuditEvent> batch) {
    buffer_.clear();
    for (const AuditEvent& e : batch) {
      append_json(buffer_, e);
      buffer_ += '\n';
    }
    std::size_t done = 0;
    while (done < buffer_.size()) {
      const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return false;
      done += static_cast<std::size_t>(n);
    }
    if (durable_ && ::fdatasync(fd_) != 0) return false;
    ++writes_;
    return true;
  }
  std::string name() const { return "jsonl:" + path_; }
  std::size_t writes() const { return writes_; }

 private:
  std::string path_;
  bool durable_;
  int fd_;
  std::string buffer_;  // reused: grows to the largest batch once
  std::size_t writes_ = 0;
};

}  // namespace examples
