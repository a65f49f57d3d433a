#include "server/api/tls.h"

#include <fcntl.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/confined_open.h"

namespace tandem {

struct TlsMaterial::Parsed {
  X509* leaf = nullptr;
  STACK_OF(X509)* chain = nullptr;  // the certificates after the leaf
  EVP_PKEY* key = nullptr;
  X509_STORE* ca = nullptr;
  STACK_OF(X509_NAME)* ca_names = nullptr;
  std::string subject;

  ~Parsed() {
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_STORE_free(ca);
    sk_X509_NAME_pop_free(ca_names, X509_NAME_free);
  }
};

namespace {

namespace fs = std::filesystem;

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM data found";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioDeleter>;

Bio MemoryBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate of a PEM text, in order.
absl::StatusOr<std::vector<X509*>> ReadCertificates(const std::string& pem, const char* flag,
                                                    const std::string& path) {
  Bio bio = MemoryBio(pem);
  std::vector<X509*> certs;
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.push_back(c);
  ERR_clear_error();  // the end of the data reads as an error
  if (certs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, " holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
  }
  return certs;
}

std::string Subject(X509* cert) {
  char buf[512];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
  return buf;
}

void WritePrivateFile(const std::string& path, const std::string& bytes, absl::Status* status) {
  if (!status->ok()) return;
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
  if (fd >= 0) ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    *status = absl::InternalError(absl::StrCat("cannot write the TLS copy ", path));
  }
}

}  // namespace

TlsMaterial::TlsMaterial(TlsFiles files, std::string staging)
    : files_(std::move(files)), staging_(std::move(staging)) {}

TlsMaterial::~TlsMaterial() {
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

absl::StatusOr<std::unique_ptr<TlsMaterial>> TlsMaterial::Load(TlsFiles files) {
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together: give both");
  }
  if (files.cert.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  const char* tmpdir = std::getenv("TMPDIR");
  std::string tmpl = absl::StrCat(tmpdir && *tmpdir ? tmpdir : "/tmp", "/tandem-tls-XXXXXX");
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a private folder like ", tmpl));
  }
  std::unique_ptr<TlsMaterial> tls(new TlsMaterial(std::move(files), tmpl));
  if (absl::Status s = tls->Reload(); !s.ok()) return s;
  return tls;
}

absl::Status TlsMaterial::Reload() {
  absl::StatusOr<std::string> cert = ReadFileBeneath("", files_.cert);
  if (!cert.ok()) return absl::InvalidArgumentError(absl::StrCat("--tls_cert: ", cert.status().message()));
  absl::StatusOr<std::string> key = ReadFileBeneath("", files_.key);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat("--tls_key: ", key.status().message()));
  std::string ca_pem;
  if (mutual()) {
    absl::StatusOr<std::string> ca = ReadFileBeneath("", files_.client_ca);
    if (!ca.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--tls_client_ca: ", ca.status().message()));
    }
    ca_pem = *std::move(ca);
  }
  absl::StatusOr<std::shared_ptr<const Parsed>> parsed = Parse(files_, *cert, *key, ca_pem);
  if (!parsed.ok()) return parsed.status();
  if (absl::Status s = Stage(*cert, *key, ca_pem); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  current_ = *std::move(parsed);
  return absl::OkStatus();
}

absl::Status TlsMaterial::Stage(const std::string& cert_pem, const std::string& key_pem,
                                const std::string& ca_pem) {
  absl::Status status;
  if (mutual()) WritePrivateFile(staging_ + "/ca.pem", ca_pem, &status);
  // gRPC reads the pair with a check that the key matches the certificate, so a read between
  // the two renames is skipped, not served.
  WritePrivateFile(staging_ + "/key.pem", key_pem, &status);
  WritePrivateFile(staging_ + "/cert.pem", cert_pem, &status);
  return status;
}

std::shared_ptr<grpc::ServerCredentials> TlsMaterial::GrpcCredentials() {
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      staging_ + "/key.pem", staging_ + "/cert.pem", mutual() ? staging_ + "/ca.pem" : "",
      kRefreshSeconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mutual()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

int TlsMaterial::CertCallback(SSL* ssl, void* self) {
  auto* tls = static_cast<TlsMaterial*>(self);
  std::shared_ptr<const Parsed> p;
  {
    absl::MutexLock lock(&tls->mu_);
    p = tls->current_;
  }
  if (!p || SSL_use_certificate(ssl, p->leaf) != 1 || SSL_use_PrivateKey(ssl, p->key) != 1 ||
      SSL_set1_chain(ssl, p->chain) != 1) {
    return 0;
  }
  if (p->ca != nullptr) {
    if (SSL_set1_verify_cert_store(ssl, p->ca) != 1) return 0;
    SSL_set_client_CA_list(ssl, SSL_dup_CA_list(p->ca_names));
  }
  return 1;
}

bool TlsMaterial::ConfigureHttps(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_cert_cb(ctx, &TlsMaterial::CertCallback, this);
  // Requested, verified when presented, not required: the handler decides per path.
  if (mutual()) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return true;
}

bool TlsMaterial::PeerVerified(const SSL* ssl) {
  return ssl != nullptr && SSL_get0_peer_certificate(ssl) != nullptr &&
         SSL_get_verify_result(ssl) == X509_V_OK;
}

std::string TlsMaterial::subject() const {
  absl::MutexLock lock(&mu_);
  return current_ ? current_->subject : "";
}

absl::StatusOr<std::shared_ptr<const TlsMaterial::Parsed>> TlsMaterial::Parse(
    const TlsFiles& files, const std::string& cert_pem, const std::string& key_pem,
    const std::string& ca_pem) {
  auto p = std::make_shared<Parsed>();
  absl::StatusOr<std::vector<X509*>> certs = ReadCertificates(cert_pem, "--tls_cert", files.cert);
  if (!certs.ok()) return certs.status();
  p->leaf = (*certs)[0];
  p->chain = sk_X509_new_null();
  for (size_t i = 1; i < certs->size(); ++i) sk_X509_push(p->chain, (*certs)[i]);
  p->subject = Subject(p->leaf);
  if (X509_cmp_current_time(X509_get0_notAfter(p->leaf)) <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_cert=", files.cert, ": the certificate (", p->subject,
                     ") has expired"));
  }
  Bio key_bio = MemoryBio(key_pem);
  p->key = PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr);
  if (p->key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_key=", files.key, " holds no unencrypted PEM private key: ", OpenSslError()));
  }
  if (X509_check_private_key(p->leaf, p->key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls_key=", files.key,
                                                   " does not match the certificate of "
                                                   "--tls_cert=",
                                                   files.cert));
  }
  if (!ca_pem.empty()) {
    absl::StatusOr<std::vector<X509*>> cas =
        ReadCertificates(ca_pem, "--tls_client_ca", files.client_ca);
    if (!cas.ok()) return cas.status();
    p->ca = X509_STORE_new();
    p->ca_names = sk_X509_NAME_new_null();
    for (X509* c : *cas) {
      X509_STORE_add_cert(p->ca, c);
      sk_X509_NAME_push(p->ca_names, X509_NAME_dup(X509_get_subject_name(c)));
      X509_free(c);
    }
  }
  return p;
}

}  // namespace tandem
