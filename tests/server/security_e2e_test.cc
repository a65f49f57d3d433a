// Security end to end over real gRPC channels: TLS and mutual TLS on both ports with the
// committed test PKI (tests/testdata/tls), certificates reloaded without dropping a stream,
// bearer tokens and their scopes, job ownership, the loopback rule, and the health service
// staying open to probes.
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/channel.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/api/auth.h"
#include "server/api/server.h"
#include "server/core/worker_pool.h"
#include "tandem/v1/inference.grpc.pb.h"
#include "tandem/v1/training.grpc.pb.h"
#include "tests/server/device_hold.h"
#include "tests/server/e2e_fixture.h"
#include "tests/testing/test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using client::ChannelSecurity;

std::string Pki(const std::string& name) {
  return std::string(TANDEM_SOURCE_DIR) + "/tests/testdata/tls/" + name;
}

constexpr char kAliceToken[] = "alice-token-0123456789abcdef";
constexpr char kBobToken[] = "bob-token-0123456789abcdef";
constexpr char kReaderToken[] = "reader-token-0123456789abcdef";
constexpr char kAdminToken[] = "admin-token-0123456789abcdef";

class SecurityE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(testing::MakeTempDir("tandem-security-e2e"));
    testing::WriteTinyModel(*root_ + "/models/tiny");
    fs::create_directories(*root_ + "/data");
    std::ofstream fortunes(*root_ + "/data/fortunes.txt");
    for (int i = 0; i < 60; ++i) fortunes << "The cat number " << i << " sleeps.\n%\n";
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(5));
  }

  // The tokens file: alice and bob train, reader only generates, root is the admin (its token
  // given as its SHA-256).
  static std::string WriteTokens(const std::string& extra = "") {
    const std::string path = *root_ + "/tokens";
    std::ofstream out(path);
    out << "# test clients\n"
        << "alice inference,train " << kAliceToken << "\n"
        << "bob\ttrain,inference\t" << kBobToken << "\n"
        << "reader inference " << kReaderToken << "\n"
        << "root admin sha256:"
        // sha256("admin-token-0123456789abcdef")
        << HexSha256(kAdminToken) << "\n"
        << extra;
    return path;
  }
  static std::string HexSha256(const std::string& text) {
    std::array<uint8_t, 32> d = Sha256(text);
    std::string hex;
    for (uint8_t b : d) absl::StrAppendFormat(&hex, "%02x", b);
    return hex;
  }

  ServerOptions Options() {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.metrics_listen = "127.0.0.1:0";
    o.models_dir = *root_ + "/models";
    o.devices = {"cpu"};
    o.log_requests = false;
    return o;
  }
  void Start(const ServerOptions& o) {
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  std::string Address() const { return absl::StrCat("localhost:", server_->port()); }

  std::shared_ptr<grpc::Channel> Channel(const ChannelSecurity& security) {
    return client::OpenSecureChannel(Address(), security, grpc::ChannelArguments());
  }
  static ChannelSecurity Tls(const std::string& cert = "", const std::string& key = "") {
    ChannelSecurity s;
    s.tls = true;
    s.root_pem = testing::ReadAll(Pki("ca.pem"));
    if (!cert.empty()) {
      s.cert_pem = testing::ReadAll(Pki(cert));
      s.key_pem = testing::ReadAll(Pki(key));
    }
    return s;
  }
  static ChannelSecurity Token(const std::string& token) {
    ChannelSecurity s;
    s.token = token;
    return s;
  }

  static grpc::Status ListModels(const std::shared_ptr<grpc::Channel>& channel,
                                 tandem::v1::ListModelsResponse* out = nullptr) {
    auto stub = tandem::v1::Inference::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    tandem::v1::ListModelsResponse resp;
    grpc::Status s = stub->ListModels(&ctx, {}, &resp);
    if (out) *out = resp;
    return s;
  }
  static grpc::Status Generate(const std::shared_ptr<grpc::Channel>& channel,
                               int max_tokens = 4) {
    auto stub = tandem::v1::Inference::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    tandem::v1::GenerateRequest req;
    req.set_prompt("the cat");
    req.mutable_text()->set_max_tokens(max_tokens);
    auto reader = stub->Generate(&ctx, req);
    return testing::Drain(reader.get());
  }
  static grpc::health::v1::HealthCheckResponse::ServingStatus Health(
      const std::shared_ptr<grpc::Channel>& channel) {
    auto health = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckResponse resp;
    if (!health->Check(&ctx, {}, &resp).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    return resp.status();
  }
  // The common name of the certificate the server presented on `channel`.
  static std::string PeerName(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = tandem::v1::Inference::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    tandem::v1::ListModelsResponse resp;
    if (!stub->ListModels(&ctx, {}, &resp).ok()) return "";
    std::vector<grpc::string_ref> cn = ctx.auth_context()->FindPropertyValues("x509_common_name");
    return cn.empty() ? "" : std::string(cn[0].data(), cn[0].size());
  }

  // The common name of the certificate the metrics port presents to a new HTTPS connection.
  std::string MetricsPeerName() {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    BIO* bio = BIO_new_ssl_connect(ctx);
    BIO_set_conn_hostname(bio, absl::StrCat("127.0.0.1:", server_->metrics_port()).c_str());
    std::string cn;
    if (BIO_do_connect(bio) == 1 && BIO_do_handshake(bio) == 1) {
      SSL* ssl = nullptr;
      BIO_get_ssl(bio, &ssl);
      if (X509* peer = SSL_get1_peer_certificate(ssl)) {
        char buf[256] = {0};
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buf, sizeof buf);
        cn = buf;
        X509_free(peer);
      }
    }
    BIO_free_all(bio);
    SSL_CTX_free(ctx);
    return cn;
  }

  static std::string* root_;
  std::unique_ptr<Server> server_;
};

std::string* SecurityE2ETest::root_ = nullptr;

TEST_F(SecurityE2ETest, TlsServesTlsClientsAndRefusesPlaintext) {
  ServerOptions o = Options();
  o.tls = {Pki("server.pem"), Pki("server.key"), ""};
  Start(o);
  EXPECT_TRUE(ListModels(Channel(Tls())).ok());
  EXPECT_TRUE(Generate(Channel(Tls())).ok());
  EXPECT_EQ(PeerName(Channel(Tls())), "tandem test server 1");
  EXPECT_EQ(ListModels(Channel(ChannelSecurity{})).error_code(), grpc::StatusCode::UNAVAILABLE);
  // A client that trusts another CA does not accept the server.
  ChannelSecurity other = Tls();
  other.root_pem = testing::ReadAll(Pki("other_ca.pem"));
  EXPECT_EQ(ListModels(Channel(other)).error_code(), grpc::StatusCode::UNAVAILABLE);

  // The metrics port speaks HTTPS with the same certificate.
  httplib::SSLClient https("localhost", server_->metrics_port());
  https.set_ca_cert_path(Pki("ca.pem").c_str());
  https.enable_server_certificate_verification(true);
  auto res = https.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("tandem_"), std::string::npos);
  httplib::Client plain("localhost", server_->metrics_port());
  EXPECT_FALSE(plain.Get("/metrics")) << "plaintext HTTP answered on the TLS metrics port";
}

TEST_F(SecurityE2ETest, MutualTlsNeedsAClientCertificateOfTheCa) {
  ServerOptions o = Options();
  o.tls = {Pki("server.pem"), Pki("server.key"), Pki("ca.pem")};
  Start(o);
  EXPECT_TRUE(ListModels(Channel(Tls("client.pem", "client.key"))).ok());
  EXPECT_EQ(ListModels(Channel(Tls())).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ListModels(Channel(Tls("rogue_client.pem", "rogue_client.key"))).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // Metrics: /healthz stays open to probes without a certificate; /metrics needs one.
  httplib::SSLClient anonymous("localhost", server_->metrics_port());
  anonymous.set_ca_cert_path(Pki("ca.pem").c_str());
  anonymous.enable_server_certificate_verification(true);
  auto health = anonymous.Get("/healthz");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  auto denied = anonymous.Get("/metrics");
  ASSERT_TRUE(denied);
  EXPECT_EQ(denied->status, 403);
  httplib::SSLClient scraper("localhost", server_->metrics_port(), Pki("client.pem"),
                             Pki("client.key"));
  scraper.set_ca_cert_path(Pki("ca.pem").c_str());
  scraper.enable_server_certificate_verification(true);
  auto metrics = scraper.Get("/metrics");
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
}

TEST_F(SecurityE2ETest, ReloadSwapsTheCertificateWithoutDroppingAStream) {
  const std::string cert = *root_ + "/live.pem", key = *root_ + "/live.key";
  fs::copy_file(Pki("server.pem"), cert, fs::copy_options::overwrite_existing);
  fs::copy_file(Pki("server.key"), key, fs::copy_options::overwrite_existing);
  ServerOptions o = Options();
  o.tls = {cert, key, ""};
  Start(o);
  auto old_channel = Channel(Tls());
  ASSERT_EQ(PeerName(old_channel), "tandem test server 1");
  ASSERT_EQ(MetricsPeerName(), "tandem test server 1");

  // A stream in flight on the old certificate's connection, held on the device.
  testing::DeviceHold hold(server_->pool()->loop(0));
  ASSERT_TRUE(hold.Hold());
  grpc::Status in_flight;
  std::thread stream([&] { in_flight = Generate(old_channel, 8); });

  // A bad pair is refused and changes nothing.
  fs::copy_file(Pki("server2.key"), key, fs::copy_options::overwrite_existing);
  absl::Status bad = server_->Reload();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("does not match"), std::string::npos) << bad;
  EXPECT_EQ(PeerName(Channel(Tls())), "tandem test server 1");

  fs::copy_file(Pki("server2.pem"), cert, fs::copy_options::overwrite_existing);
  ASSERT_TRUE(server_->Reload().ok());
  // gRPC picks the new pair up within TlsMaterial::kRefreshSeconds; new connections get it.
  std::string seen;
  for (int i = 0; i < 50 && seen != "tandem test server 2"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    seen = PeerName(Channel(Tls()));
  }
  EXPECT_EQ(seen, "tandem test server 2");
  EXPECT_EQ(MetricsPeerName(), "tandem test server 2") << "the metrics port reloads too";
  hold.Release();
  stream.join();
  EXPECT_TRUE(in_flight.ok()) << in_flight.error_message();
  EXPECT_TRUE(ListModels(old_channel).ok()) << "the old connection was dropped";
}

TEST_F(SecurityE2ETest, TokensAndScopes) {
  ServerOptions o = Options();
  o.auth_tokens = WriteTokens();
  Start(o);
  auto none = Channel({});
  grpc::Status s = ListModels(none);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(s.error_message().find("authorization: Bearer TOKEN"), std::string::npos);
  EXPECT_EQ(Generate(none).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The health service stays open to probes.
  EXPECT_EQ(Health(none), grpc::health::v1::HealthCheckResponse::SERVING);

  const std::string wrong = "not-a-known-token-0123456789";
  s = ListModels(Channel(Token(wrong)));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.error_message().find(wrong), std::string::npos) << "a token in a status";

  EXPECT_TRUE(Generate(Channel(Token(kReaderToken))).ok());
  auto training = tandem::v1::Training::NewStub(Channel(Token(kReaderToken)));
  grpc::ClientContext ctx;
  tandem::v1::ListTrainJobsResponse jobs;
  s = training->ListTrainJobs(&ctx, {}, &jobs);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(s.error_message().find("train scope"), std::string::npos) << s.error_message();
  EXPECT_EQ(s.error_message().find(kReaderToken), std::string::npos);

  // The admin's token is given as its SHA-256 in the file.
  EXPECT_TRUE(Generate(Channel(Token(kAdminToken))).ok());
  // A raw "authorization" that is not "Bearer TOKEN".
  auto stub = tandem::v1::Inference::NewStub(none);
  grpc::ClientContext basic;
  basic.AddMetadata("authorization", std::string("Basic ") + kAliceToken);
  tandem::v1::ListModelsResponse resp;
  EXPECT_EQ(stub->ListModels(&basic, {}, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(SecurityE2ETest, ReloadAddsAndRevokesTokens) {
  ServerOptions o = Options();
  o.auth_tokens = WriteTokens();
  Start(o);
  const std::string carol = "carol-token-0123456789abcdef";
  EXPECT_EQ(ListModels(Channel(Token(carol))).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  WriteTokens(absl::StrCat("carol inference ", carol, "\n"));
  ASSERT_TRUE(server_->Reload().ok());
  EXPECT_TRUE(ListModels(Channel(Token(carol))).ok());
  // A file that does not parse keeps the table in use.
  std::ofstream(*root_ + "/tokens") << "carol inference\n";
  absl::Status bad = server_->Reload();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ListModels(Channel(Token(carol))).ok());
  WriteTokens();  // carol revoked
  ASSERT_TRUE(server_->Reload().ok());
  EXPECT_EQ(ListModels(Channel(Token(carol))).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(SecurityE2ETest, TrainClientsSeeAndControlOnlyTheirOwnJobs) {
  ServerOptions o = Options();
  o.auth_tokens = WriteTokens();
  o.data_dir = *root_ + "/data";
  o.state_dir = *root_ + "/state-owner";
  o.train_memory_limit_mb = 1024;
  Start(o);
  auto alice = tandem::v1::Training::NewStub(Channel(Token(kAliceToken)));
  auto bob = tandem::v1::Training::NewStub(Channel(Token(kBobToken)));
  auto root = tandem::v1::Training::NewStub(Channel(Token(kAdminToken)));

  tandem::v1::SubmitTrainJobRequest submit;
  *submit.mutable_spec() = testing::TinyTextJob("fortunes.txt", 100000);
  tandem::v1::TrainJob job;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(alice->SubmitTrainJob(&ctx, submit, &job).ok());
  }
  EXPECT_EQ(job.owner(), "alice");
  // Publishing a model is the admin's.
  {
    tandem::v1::SubmitTrainJobRequest deploy = submit;
    deploy.mutable_spec()->set_deploy_as("served-by-alice");
    grpc::ClientContext ctx;
    tandem::v1::TrainJob refused;
    grpc::Status s = alice->SubmitTrainJob(&ctx, deploy, &refused);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
    EXPECT_NE(s.error_message().find("admin scope"), std::string::npos);
  }
  auto list = [](tandem::v1::Training::Stub* stub) {
    grpc::ClientContext ctx;
    tandem::v1::ListTrainJobsResponse resp;
    EXPECT_TRUE(stub->ListTrainJobs(&ctx, {}, &resp).ok());
    return resp.jobs_size();
  };
  EXPECT_EQ(list(alice.get()), 1);
  EXPECT_EQ(list(bob.get()), 0);
  EXPECT_EQ(list(root.get()), 1);

  tandem::v1::GetTrainJobRequest get;
  get.set_id(job.id());
  tandem::v1::TrainJob seen;
  {
    grpc::ClientContext ctx;
    grpc::Status s = bob->GetTrainJob(&ctx, get, &seen);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    tandem::v1::WatchTrainJobRequest watch;
    watch.set_id(job.id());
    auto reader = bob->WatchTrainJob(&ctx, watch);
    tandem::v1::TrainJobEvent event;
    EXPECT_FALSE(reader->Read(&event));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  tandem::v1::CancelTrainJobRequest cancel;
  cancel.set_id(job.id());
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(bob->CancelTrainJob(&ctx, cancel, &seen).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    tandem::v1::GetTrainJobRequest path;
    path.set_id("../jobs.db");
    EXPECT_EQ(alice->GetTrainJob(&ctx, path, &seen).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // The admin controls every client's jobs.
  grpc::ClientContext ctx;
  EXPECT_TRUE(root->CancelTrainJob(&ctx, cancel, &seen).ok());
  EXPECT_EQ(seen.owner(), "alice");
}

TEST_F(SecurityE2ETest, WithoutAuthenticationTheServerStaysOnLoopback) {
  ServerOptions o = Options();
  o.listen = "0.0.0.0:0";
  o.metrics_listen = "0.0.0.0:0";
  Start(o);
  EXPECT_EQ(server_->listen_address(), "127.0.0.1:0");
  server_->Shutdown(absl::Seconds(1));
  server_.reset();

  o.listen = "192.0.2.1:0";  // a specific remote address cannot be made local
  absl::StatusOr<std::unique_ptr<Server>> refused = Server::Create(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--auth_tokens"), std::string::npos);

  o.listen = "0.0.0.0:0";
  o.insecure_allow_remote = true;
  Start(o);
  EXPECT_EQ(server_->listen_address(), "0.0.0.0:0");
  server_->Shutdown(absl::Seconds(1));
  server_.reset();

  o.insecure_allow_remote = false;
  o.auth_tokens = WriteTokens();
  Start(o);
  EXPECT_EQ(server_->listen_address(), "0.0.0.0:0");
}

}  // namespace
}  // namespace tandem
