// A Node-API addon over onnxruntime's C++ API for what onnxruntime-node cannot do: run a graph with its
// inputs and outputs bound to buffers the session keeps (IO binding), on the CPU or on a CUDA device,
// and there optionally replay a captured CUDA graph (the CUDA execution provider's enable_cuda_graph).
// Each distinct set of input shapes gets its own binding slot: fixed buffers, allocated once by the
// session's own allocator, that a run fills from the caller's typed arrays, and one CUDA graph id.
//
// It loads the same libonnxruntime that onnxruntime-node ships (its path is given), so it needs no
// onnxruntime of its own. Host <-> device copies go through libcudart (dlopen'd by name), outside the
// captured graph. A run returns a promise: the run and the copies out happen on a libuv thread.
// Built by scripts/build-native.sh; used through src/engine/ort-native.ts (which documents the JS API).
#define ORT_API_MANUAL_INIT
#include <dlfcn.h>
#include <napi.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace {

using CudaMemcpy = int (*)(void*, const void*, size_t, int);
using CudaSync = int (*)();
constexpr int kHostToDevice = 1, kDeviceToHost = 2;

struct Library {
  void* ort = nullptr;
  void* cudart = nullptr;
  CudaMemcpy memcpy = nullptr;
  CudaSync sync = nullptr;
  std::unique_ptr<Ort::Env> env;
};
Library lib;

size_t ElementSize(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    default: return 0;
  }
}

const char* TypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    default: return "unsupported";
  }
}

std::string ShapeString(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); i++) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// The process's engine threads each load the addon: one of them initialises, under this lock.
std::mutex init_lock;

void Init(Napi::Env env, const std::string& ort_path, const std::string& cudart) {
  std::lock_guard<std::mutex> hold(init_lock);
  if (!cudart.empty() && !lib.cudart) {
    lib.cudart = dlopen(cudart.c_str(), RTLD_NOW);
    if (lib.cudart) {
      lib.memcpy = reinterpret_cast<CudaMemcpy>(dlsym(lib.cudart, "cudaMemcpy"));
      lib.sync = reinterpret_cast<CudaSync>(dlsym(lib.cudart, "cudaDeviceSynchronize"));
    }
  }
  if (lib.env) return;
  lib.ort = dlopen(ort_path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!lib.ort) throw Napi::Error::New(env, "cannot load " + ort_path + ": " + dlerror());
  auto get_base = reinterpret_cast<const OrtApiBase* (*)()>(dlsym(lib.ort, "OrtGetApiBase"));
  if (!get_base) throw Napi::Error::New(env, ort_path + " has no OrtGetApiBase");
  const OrtApi* api = get_base()->GetApi(ORT_API_VERSION);
  if (!api) throw Napi::Error::New(env, ort_path + " is older than the headers (ORT_API_VERSION " + std::to_string(ORT_API_VERSION) + ")");
  Ort::InitApi(api);
  lib.env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_WARNING, "rmt-bound");
}

struct Port {  // a graph input or output; a dimension < 0 is symbolic (its name in symbols)
  std::string name;
  ONNXTensorElementDataType type;
  std::vector<int64_t> dims;
  std::vector<std::string> symbols;
};

Port MakePort(const std::string& name, const Ort::TypeInfo& info) {
  auto t = info.GetTensorTypeAndShapeInfo();
  Port p{name, t.GetElementType(), t.GetShape(), {}};
  std::vector<const char*> sym(p.dims.size(), nullptr);
  t.GetSymbolicDimensions(sym.data(), sym.size());
  for (auto* c : sym) p.symbols.push_back(c ? c : "");
  return p;
}

struct Slot {  // the bound buffers of one set of input shapes
  Ort::IoBinding binding;
  std::vector<Ort::Value> inputs;
  std::vector<Ort::Value> outputs;  // empty until the first run has given their shapes
  int graph_id;
  explicit Slot(Ort::Session& s, int id) : binding(s), graph_id(id) {}
};

class BoundSession : public Napi::ObjectWrap<BoundSession> {
 public:
  static Napi::Object Define(Napi::Env env, Napi::Object exports) {
    auto cls = DefineClass(env, "BoundSession", {InstanceMethod("run", &BoundSession::Run),
                                                 InstanceMethod("release", &BoundSession::Release),
                                                 InstanceAccessor("inputs", &BoundSession::Inputs, nullptr),
                                                 InstanceAccessor("outputs", &BoundSession::Outputs, nullptr),
                                                 InstanceAccessor("slots", &BoundSession::Slots, nullptr)});
    exports.Set("BoundSession", cls);
    return exports;
  }

  // new BoundSession(file, { ortLibrary, provider: 'cpu'|'cuda', deviceId, intraOpThreads, cudaGraph, cudart, freeDims })
  explicit BoundSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BoundSession>(info) {
    Napi::Env env = info.Env();
    std::string file = info[0].As<Napi::String>();
    auto o = info[1].As<Napi::Object>();
    auto str = [&](const char* k, const char* d) { return o.Has(k) ? o.Get(k).As<Napi::String>().Utf8Value() : std::string(d); };
    Init(env, str("ortLibrary", ""), str("cudart", ""));
    cuda_ = str("provider", "cpu") == "cuda";
    cuda_graph_ = o.Has("cudaGraph") && o.Get("cudaGraph").As<Napi::Boolean>().Value();
    int device = o.Has("deviceId") ? o.Get("deviceId").As<Napi::Number>().Int32Value() : 0;
    try {
      Ort::SessionOptions so;
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      if (o.Has("intraOpThreads")) so.SetIntraOpNumThreads(o.Get("intraOpThreads").As<Napi::Number>().Int32Value());
      if (o.Has("freeDims")) {  // static shapes: a captured graph needs no shape arithmetic on the CPU
        auto dims = o.Get("freeDims").As<Napi::Object>();
        auto names = dims.GetPropertyNames();
        for (uint32_t i = 0; i < names.Length(); i++) {
          std::string n = names.Get(i).As<Napi::String>();
          so.AddFreeDimensionOverrideByName(n.c_str(), dims.Get(n).As<Napi::Number>().Int64Value());
        }
      }
      if (cuda_) {
        if (!lib.memcpy || !lib.sync) throw Napi::Error::New(env, "provider cuda: cudaMemcpy / cudaDeviceSynchronize not found (option cudart: a libcudart.so path or name)");
        Ort::CUDAProviderOptions cuda;
        cuda.Update({{"device_id", std::to_string(device)}, {"enable_cuda_graph", cuda_graph_ ? "1" : "0"}});
        so.AppendExecutionProvider_CUDA_V2(*cuda);
      }
      session_ = std::make_unique<Ort::Session>(*lib.env, file.c_str(), so);
      mem_ = std::make_unique<Ort::MemoryInfo>(cuda_ ? "Cuda" : "Cpu", OrtArenaAllocator, cuda_ ? device : 0, OrtMemTypeDefault);
      alloc_ = std::make_unique<Ort::Allocator>(*session_, *mem_);
      Ort::AllocatorWithDefaultOptions names;
      for (size_t i = 0; i < session_->GetInputCount(); i++)
        inputs_.push_back(MakePort(session_->GetInputNameAllocated(i, names).get(), session_->GetInputTypeInfo(i)));
      for (size_t i = 0; i < session_->GetOutputCount(); i++)
        outputs_.push_back(MakePort(session_->GetOutputNameAllocated(i, names).get(), session_->GetOutputTypeInfo(i)));
    } catch (const Ort::Exception& e) {
      throw Napi::Error::New(env, file + ": " + e.what());
    }
  }

 private:
  Napi::Value Ports(Napi::Env env, const std::vector<Port>& ports) {
    auto a = Napi::Array::New(env, ports.size());
    for (size_t i = 0; i < ports.size(); i++) {
      auto p = Napi::Object::New(env);
      p.Set("name", ports[i].name);
      p.Set("type", TypeName(ports[i].type));
      auto shape = Napi::Array::New(env, ports[i].dims.size());
      for (size_t k = 0; k < ports[i].dims.size(); k++) {
        if (ports[i].dims[k] >= 0) shape.Set(k, Napi::Number::New(env, static_cast<double>(ports[i].dims[k])));
        else shape.Set(k, Napi::String::New(env, ports[i].symbols[k].empty() ? "?" : ports[i].symbols[k]));
      }
      p.Set("shape", shape);
      a.Set(i, p);
    }
    return a;
  }
  Napi::Value Inputs(const Napi::CallbackInfo& info) { return Ports(info.Env(), inputs_); }
  Napi::Value Outputs(const Napi::CallbackInfo& info) { return Ports(info.Env(), outputs_); }
  Napi::Value Slots(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), slots_.size()); }

  void Copy(void* dst, const void* src, size_t n, int kind) {
    if (!cuda_) std::memcpy(dst, src, n);
    else if (int rc = lib.memcpy(dst, src, n, kind)) throw std::runtime_error("cudaMemcpy failed: " + std::to_string(rc));
  }

  // run({ name: { type, dims, data } }, fetches) -> Promise<{ name: { type, dims, data } }>. On the calling
  // thread: the feeds checked and copied into the slot's buffers; on a libuv thread: the run and the copies
  // out; back here: the typed arrays. One run at a time per session (ort-native.ts queues them).
  Napi::Value Run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!session_) throw Napi::Error::New(env, "session released");
    if (busy_) throw Napi::Error::New(env, "a run of this session is in flight");
    auto feeds = info[0].As<Napi::Object>();
    auto fetch = info[1].As<Napi::Array>();
    // The slot key: every input's dims, in graph order.
    std::vector<std::vector<int64_t>> shapes;
    std::vector<Napi::TypedArray> data;
    std::string key;
    for (auto& in : inputs_) {
      if (!feeds.Has(in.name)) throw Napi::TypeError::New(env, "missing input '" + in.name + "'");
      auto t = feeds.Get(in.name).As<Napi::Object>();
      if (t.Get("type").As<Napi::String>().Utf8Value() != TypeName(in.type))
        throw Napi::TypeError::New(env, "input '" + in.name + "' expects " + TypeName(in.type));
      auto dims = t.Get("dims").As<Napi::Array>();
      std::vector<int64_t> d;
      size_t count = 1;
      for (uint32_t i = 0; i < dims.Length(); i++) {
        d.push_back(dims.Get(i).As<Napi::Number>().Int64Value());
        count *= d.back();
      }
      auto arr = t.Get("data").As<Napi::TypedArray>();
      if (arr.ByteLength() != count * ElementSize(in.type))
        throw Napi::RangeError::New(env, "input '" + in.name + "' " + ShapeString(d) + ": " + std::to_string(arr.ByteLength()) + " bytes of data, expected " + std::to_string(count * ElementSize(in.type)));
      key += ShapeString(d);
      shapes.push_back(std::move(d));
      data.push_back(arr);
    }
    std::vector<size_t> wanted;
    for (uint32_t f = 0; f < fetch.Length(); f++) {
      std::string name = fetch.Get(f).As<Napi::String>();
      size_t i = 0;
      while (i < outputs_.size() && outputs_[i].name != name) i++;
      if (i == outputs_.size()) throw Napi::TypeError::New(env, "unknown output '" + name + "'");
      wanted.push_back(i);
    }
    Slot* slot;
    try {
      auto it = slots_.find(key);
      if (it == slots_.end()) {
        auto fresh = std::make_unique<Slot>(*session_, static_cast<int>(slots_.size()) + 1);
        for (size_t i = 0; i < inputs_.size(); i++) {
          fresh->inputs.push_back(Ort::Value::CreateTensor(*alloc_, shapes[i].data(), shapes[i].size(), inputs_[i].type));
          fresh->binding.BindInput(inputs_[i].name.c_str(), fresh->inputs.back());
        }
        for (auto& out : outputs_) fresh->binding.BindOutput(out.name.c_str(), *mem_);
        it = slots_.emplace(key, std::move(fresh)).first;
      }
      slot = it->second.get();
      for (size_t i = 0; i < inputs_.size(); i++) {
        auto& a = data[i];
        Copy(slot->inputs[i].GetTensorMutableRawData(), static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), a.ByteLength(), kHostToDevice);
      }
    } catch (const Ort::Exception& e) {
      throw Napi::Error::New(env, std::string("onnxruntime: ") + e.what());
    } catch (const std::runtime_error& e) {
      throw Napi::Error::New(env, e.what());
    }
    auto* worker = new RunWorker(env, this, slot, std::move(wanted));
    busy_ = true;
    worker->Queue();
    return worker->Promise();
  }

  // The libuv thread's part of a run: what it copies out, per fetched output.
  struct Fetched {
    size_t index;
    std::vector<int64_t> dims;
    std::vector<uint8_t> bytes;
  };

  std::vector<Fetched> Execute(Slot& s, const std::vector<size_t>& wanted) {
    // A pageable host-to-device cudaMemcpy may return before its DMA lands, and onnxruntime runs on its
    // own stream: wait for the copies before the run.
    if (cuda_) lib.sync();
    Ort::RunOptions ro;
    // A slot's first run is not captured (graph id -1): it allocates the outputs, which are then bound,
    // so the captured graph writes into buffers that stay bound.
    if (cuda_graph_) ro.AddConfigEntry("gpu_graph_id", s.outputs.empty() ? "-1" : std::to_string(s.graph_id).c_str());
    session_->Run(ro, s.binding);
    s.binding.SynchronizeOutputs();  // device outputs are complete before they are copied out
    if (s.outputs.empty()) {
      // The first run allocated the outputs; bind those same buffers from now on (a captured graph
      // writes where it wrote when it was captured).
      s.outputs = s.binding.GetOutputValues();
      s.binding.ClearBoundOutputs();
      for (size_t i = 0; i < outputs_.size(); i++) s.binding.BindOutput(outputs_[i].name.c_str(), s.outputs[i]);
    }
    std::vector<Fetched> out;
    for (size_t i : wanted) {
      auto t = s.outputs[i].GetTensorTypeAndShapeInfo();
      Fetched f{i, t.GetShape(), std::vector<uint8_t>(t.GetElementCount() * ElementSize(outputs_[i].type))};
      Copy(f.bytes.data(), s.outputs[i].GetTensorRawData(), f.bytes.size(), kDeviceToHost);
      out.push_back(std::move(f));
    }
    return out;
  }

  Napi::Object Result(Napi::Env env, std::vector<Fetched>& fetched) {
    auto result = Napi::Object::New(env);
    for (auto& f : fetched) {
      const Port& port = outputs_[f.index];
      auto buf = Napi::ArrayBuffer::New(env, f.bytes.size());
      std::memcpy(buf.Data(), f.bytes.data(), f.bytes.size());
      auto t = Napi::Object::New(env);
      t.Set("type", TypeName(port.type));
      auto jd = Napi::Array::New(env, f.dims.size());
      for (size_t k = 0; k < f.dims.size(); k++) jd.Set(k, Napi::Number::New(env, static_cast<double>(f.dims[k])));
      t.Set("dims", jd);
      size_t n = f.bytes.size() / ElementSize(port.type);
      switch (port.type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: t.Set("data", Napi::Float32Array::New(env, n, buf, 0)); break;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: t.Set("data", Napi::Uint16Array::New(env, n, buf, 0)); break;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: t.Set("data", Napi::BigInt64Array::New(env, n, buf, 0)); break;
        default: throw Napi::TypeError::New(env, "output '" + port.name + "' has an unsupported type");
      }
      result.Set(port.name, t);
    }
    return result;
  }

  class RunWorker : public Napi::AsyncWorker {
   public:
    RunWorker(Napi::Env env, BoundSession* self, Slot* slot, std::vector<size_t> wanted)
        : Napi::AsyncWorker(env), self_(self), slot_(slot), wanted_(std::move(wanted)), deferred_(Napi::Promise::Deferred::New(env)) {
      keep_ = Napi::Persistent(self->Value());  // the session object outlives the run
    }
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
      try {
        fetched_ = self_->Execute(*slot_, wanted_);
      } catch (const Ort::Exception& e) {
        SetError(std::string("onnxruntime: ") + e.what());
      } catch (const std::exception& e) {
        SetError(e.what());
      }
    }
    void OnOK() override {
      self_->busy_ = false;
      try {
        deferred_.Resolve(self_->Result(Env(), fetched_));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      }
    }
    void OnError(const Napi::Error& e) override {
      self_->busy_ = false;
      deferred_.Reject(e.Value());
    }

   private:
    BoundSession* self_;
    Slot* slot_;
    std::vector<size_t> wanted_;
    std::vector<Fetched> fetched_;
    Napi::Promise::Deferred deferred_;
    Napi::ObjectReference keep_;
  };

  Napi::Value Release(const Napi::CallbackInfo& info) {
    if (busy_) throw Napi::Error::New(info.Env(), "release during a run");
    slots_.clear();
    alloc_.reset();
    session_.reset();
    return info.Env().Undefined();
  }

  bool cuda_ = false, cuda_graph_ = false, busy_ = false;
  std::unique_ptr<Ort::Session> session_;
  std::unique_ptr<Ort::MemoryInfo> mem_;
  std::unique_ptr<Ort::Allocator> alloc_;
  std::vector<Port> inputs_, outputs_;
  std::map<std::string, std::unique_ptr<Slot>> slots_;
};

Napi::Object Module(Napi::Env env, Napi::Object exports) { return BoundSession::Define(env, exports); }

}  // namespace

NODE_API_MODULE(ort_bound_session, Module)
