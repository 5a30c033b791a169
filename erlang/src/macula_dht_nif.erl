%% @doc Loads the Rust NIF that holds the DHT's store and routing table.
%%
%% A failed load is logged with the reason `erlang:load_nif/2' gave (by default the VM only says
%% `on_load_failure') and makes this module fail to load: there is no silent fallback to a
%% slower implementation. `macula_routing_server:start_link/2' turns that into `{error, ...}'.
-module(macula_dht_nif).

-export([new/2, close/1,
         store_put/3, store_get/2, store_publishers/2, store_delete/3, store_keys/1, store_expire/1,
         table_add/2, table_remove/2, table_closest/3, table_size/1, table_buckets/1,
         stats/1, sha256/1, settings/0,
         identity/1, net_check/1, net_start/3, net_events/2, net_find_value/4, net_store/3,
         net_address/1, net_peers/1, net_rtt/2, net_pick/4, net_report_failure/3,
         log_forward/2, log_stop/1]).

-on_load(load/0).

-export_type([handle/0, identity_key/0, net_settings/0, address/0, stats/0, put_error/0,
              setting/0]).

-define(LIB, "libmacula_dht_nif").
%% The body of every NIF stub, replaced when the library loads. A direct call, not a helper
%% function: Dialyzer takes `erlang:nif_error/1' to return anything, so the specs below are the
%% stubs' types, whereas a helper would be `no_return()' and make every caller look dead.
-define(NIF_STUB, erlang:nif_error(nif_not_loaded)).

%% The types below are what the Rust functions of the same names (`native/src/lib.rs',
%% `native/src/net.rs') return. A handle or identity key that is not one, or a `binary()',
%% `boolean()' or count argument of another type, raises `badarg'. Arguments typed `term()' are
%% checked by the NIF itself (a wrong one comes back as `{error, {invalid_..., Why}}') or, for a
%% lookup's `Tag', taken as they are.

%% A node: the store and routing table (and, after `net_start/3', the network side), owned by the
%% process that called `new/2', closed when that process dies.
-type handle() :: reference().
%% An identity key loaded by `identity/1', for `net_start/3'.
-type identity_key() :: reference().
%% The network settings of `macula_routing_config' plus the table's sizes.
-type net_settings() :: #{listen := binary(),
                          bootstrap := [binary()],
                          k := pos_integer(),
                          alpha := pos_integer(),
                          replacements := non_neg_integer(),
                          lookup_timeout_ms := pos_integer(),
                          request_timeout_ms := pos_integer(),
                          publisher_share_pct := pos_integer(),
                          peer_stores_per_s := pos_integer(),
                          atom() => term()}.
-type address() :: {inet:ip_address(), inet:port_number()}.
%% A NodeInfo map as `table_add/2' took it (its `node_id' under the atom or the binary key), with
%% `last_seen' (ms) added when it had none.
-type table_node() :: map().
%% A peer of the network side.
-type peer() :: #{node_id := <<_:256>>, address := address()}.
-type provider() :: macula_routing_server:provider().
-type stats() :: #{keys := non_neg_integer(),
                   records := non_neg_integer(),
                   bytes := non_neg_integer(),
                   expired := non_neg_integer(),
                   rejected := non_neg_integer(),
                   nodes := non_neg_integer(),
                   nif_allocated_bytes := non_neg_integer(),
                   peers := non_neg_integer(),
                   requests := non_neg_integer(),
                   bad_requests := non_neg_integer(),
                   tombstones := non_neg_integer(),
                   lookups := non_neg_integer(),
                   lookup_timeouts := non_neg_integer(),
                   lookup_p50_us := non_neg_integer(),
                   lookup_p99_us := non_neg_integer(),
                   lookup_failures := non_neg_integer(),
                   store_failures := non_neg_integer(),
                   remove_failures := non_neg_integer(),
                   handoff_failures := non_neg_integer(),
                   suspects := non_neg_integer(),
                   joined := boolean(),
                   protocol := pos_integer(),
                   refused_version := non_neg_integer(),
                   refused_forged := non_neg_integer(),
                   refused_wrong_publisher := non_neg_integer(),
                   refused_stale := non_neg_integer(),
                   refused_replay := non_neg_integer(),
                   refused_quota := non_neg_integer(),
                   refused_rate := non_neg_integer(),
                   forged_in_replies := non_neg_integer()}.
%% One integer setting of the engine's table: {Name, Default, Min, Max}.
-type setting() :: {atom(), non_neg_integer(), non_neg_integer(), non_neg_integer()}.
%% Why the network settings were refused, naming the setting (`listen', `bootstrap', `k', ...).
-type invalid_settings() :: {invalid_settings, Setting :: atom(), Why :: binary()}.
%% Why the store refused a record (`reply::store_error' and the checks of `put').
-type put_error() :: {invalid_key, not_a_binary}
                   | {invalid_provider, not_a_map | malformed | invalid_node_id | invalid_ttl}
                   | {key_too_large, Len :: non_neg_integer(), Max :: non_neg_integer()}
                   | {record_too_large, Len :: non_neg_integer(), Max :: non_neg_integer()}
                   | {limit, max_keys | max_providers_per_key | max_records | max_bytes,
                      Max :: non_neg_integer()}
                   | {stale, Seq :: non_neg_integer(), Held :: non_neg_integer()}.

-spec load() -> ok | {error, {atom(), string()}}.
load() ->
    Path = filename:join(priv_dir(), ?LIB),
    case erlang:load_nif(Path, 0) of
        ok ->
            ok;
        {error, {Reason, Text}} = Error ->
            logger:error("macula_dht: cannot load the NIF ~ts.so: ~p: ~ts", [Path, Reason, Text]),
            Error
    end.

-spec priv_dir() -> file:filename_all().
priv_dir() ->
    case code:priv_dir(macula_dht) of
        {error, bad_name} ->
            %% Not installed as an application (e.g. only an ebin on the path): priv/ sits beside ebin/.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

%% @doc A new node with id `LocalId' (normalised for distance), owned by the calling process.
-spec new(LocalId :: binary(), macula_routing_config:config()) -> handle().
new(_LocalId, _Config) -> ?NIF_STUB.

%% @doc Closes the node; in network mode, returns once its listening port is released.
-spec close(handle()) -> ok.
close(_Node) -> ?NIF_STUB.

%% @doc Upserts one provider under `Key'; `closed' once the owner is gone.
-spec store_put(handle(), Key :: term(), Provider :: term()) ->
          ok | closed | {error, put_error()}.
store_put(_Node, _Key, _Provider) -> ?NIF_STUB.

-spec store_get(handle(), Key :: term()) ->
          {ok, [provider(), ...]} | not_found | closed
        | {error, {invalid_key, not_a_binary} | corrupt_record}.
store_get(_Node, _Key) -> ?NIF_STUB.

%% @doc Removes `NodeId''s provider under `Key': everywhere when this node published it (network
%% mode), else here only.
-spec store_delete(handle(), Key :: term(), NodeId :: term()) ->
          ok | closed | {error, {invalid_key | invalid_node_id, not_a_binary}}.
store_delete(_Node, _Key, _NodeId) -> ?NIF_STUB.

%% @doc The live providers under `Key' with who published each: the 32-byte public key of the
%% node whose signature the record carries, or `local' for a record stored here without one.
-spec store_publishers(handle(), Key :: term()) ->
          [{provider(), <<_:256>> | local}, ...] | not_found | closed
        | {error, {invalid_key, not_a_binary} | corrupt_record}.
store_publishers(_Node, _Key) -> ?NIF_STUB.

-spec store_keys(handle()) -> [binary()].
store_keys(_Node) -> ?NIF_STUB.

%% @doc Purges expired records; returns how many went.
-spec store_expire(handle()) -> non_neg_integer().
store_expire(_Node) -> ?NIF_STUB.

-spec table_add(handle(), NodeInfo :: term()) ->
          ok | closed
        | {error, {invalid_node_info, not_a_map | missing_node_id | invalid_node_id
                                    | {too_large, Len :: pos_integer(), Max :: pos_integer()}}}.
table_add(_Node, _NodeInfo) -> ?NIF_STUB.

-spec table_remove(handle(), NodeId :: term()) -> ok | {error, {invalid_node_id, not_a_binary}}.
table_remove(_Node, _NodeId) -> ?NIF_STUB.

%% @doc Up to `Count' nodes, closest to `Target' first.
-spec table_closest(handle(), Target :: term(), Count :: term()) ->
          {ok, [table_node()]} | closed
        | {error, {invalid_target, not_a_binary} | {invalid_count, term()} | corrupt_record}.
table_closest(_Node, _Target, _Count) -> ?NIF_STUB.

-spec table_size(handle()) -> non_neg_integer().
table_size(_Node) -> ?NIF_STUB.

%% @doc The non-empty buckets, least recently seen node first in each.
-spec table_buckets(handle()) -> [{0..255, [table_node(), ...]}].
table_buckets(_Node) -> ?NIF_STUB.

-spec stats(handle()) -> stats().
stats(_Node) -> ?NIF_STUB.

-spec sha256(binary()) -> <<_:256>>.
sha256(_Data) -> ?NIF_STUB.

%% @doc The settings `macula_routing_server' accepts, from the engine's table (one source for
%% Rust and Erlang): `server' holds every setting with its default and range, `network' what
%% network mode adds or narrows (a reply on the wire carries at most 64 nodes, a key at most
%% 1 KiB).
-spec settings() -> #{server := [setting()], network := [setting()],
                      max_bootstrap := pos_integer()}.
settings() -> ?NIF_STUB.

%% @doc Loads the identity key at `Path' (a new one is written there when missing), or makes a
%% new one for `undefined'; any other term is `{error, {identity, not_a_binary}}'. The node id is
%% the key's id.
-spec identity(Path :: binary() | undefined) ->
          {ok, NodeId :: <<_:256>>, identity_key()}
        | {error, {identity, not_a_binary | Why :: binary()}}.
identity(_PathOrUndefined) -> ?NIF_STUB.

%% @doc Whether a server could start with these settings: addresses resolve, the node config is
%% within bounds, and the listen address can be bound now.
-spec net_check(net_settings()) -> ok | {error, invalid_settings()}.
net_check(_Settings) -> ?NIF_STUB.

%% @doc Joins the network; the owner gets `{macula_dht_net, {bootstrap, {ok, Peers} |
%% {error, Why}}}' once the bootstrap is done, and peer and lookup events while
%% `net_events(Node, true)'.
-spec net_start(handle(), identity_key(), net_settings()) ->
          {ok, address()}
        | {error, already_networked | invalid_settings() | {identity | runtime | listen, binary()}}.
net_start(_Node, _IdentityKey, _Settings) -> ?NIF_STUB.

-spec net_events(handle(), On :: boolean()) -> ok.
net_events(_Node, _On) -> ?NIF_STUB.

%% @doc `{ok, Providers}' when this node holds at least `Want'; else `ok', and the caller gets
%% `{macula_dht_lookup, Tag, Result}' within the node's lookup timeout: `{ok, Providers}',
%% `{no_answer, Providers}' when no peer answered (the providers are this node's own), or
%% `{error, lookup_failed | corrupt_record}'.
-spec net_find_value(handle(), Key :: term(), Want :: non_neg_integer(), Tag :: term()) ->
          ok | {ok, [provider(), ...]}
        | {error, {invalid_key, not_a_binary} | not_networked | overloaded | corrupt_record}.
net_find_value(_Node, _Key, _Want, _Tag) -> ?NIF_STUB.

%% @doc `store_put/3', then replication to the k closest nodes in the background.
%% @doc Publishes `Provider' under `Key' as this node (signed with its key), here and on the k
%% closest nodes. A provider whose `node_id' is another node's 32-byte id is refused: only that
%% node may publish it.
-spec net_store(handle(), Key :: term(), Provider :: term()) ->
          ok | closed | {error, put_error() | {wrong_publisher, NodeId :: binary()}}.
net_store(_Node, _Key, _Provider) -> ?NIF_STUB.

-spec net_address(handle()) -> {ok, address()} | {error, not_networked}.
net_address(_Node) -> ?NIF_STUB.

%% @doc The network side's routing table; `[]' on a single node.
-spec net_peers(handle()) -> [peer()].
net_peers(_Node) -> ?NIF_STUB.

%% @doc The smoothed round-trip time of a peer's answers to this node, in microseconds;
%% `unknown' when it never answered.
-spec net_rtt(handle(), NodeId :: term()) ->
          {ok, non_neg_integer()} | unknown
        | {error, not_networked | {invalid_node_id, not_32_bytes}}.
net_rtt(_Node, _NodeId) -> ?NIF_STUB.

%% @doc One provider of the service under `Key' picked by `Strategy' (skipping those reported
%% with `net_report_failure/3'): `ok', then the caller gets `{macula_dht_lookup, Tag, Result}',
%% `{ok, [Provider]}' or `{ok, []}' when there is none, or `{error, lookup_failed}'.
-spec net_pick(handle(), Key :: term(), Strategy :: atom(), Tag :: term()) ->
          ok | {error, {invalid_key, not_a_binary} | not_networked | overloaded
                     | {invalid_strategy, atom()}}.
net_pick(_Node, _Key, _Strategy, _Tag) -> ?NIF_STUB.

%% @doc The provider `NodeId' of the service under `Key' could not be reached: `net_pick/4'
%% skips it for the back-off returned, in milliseconds.
-spec net_report_failure(handle(), Key :: term(), NodeId :: term()) ->
          {ok, non_neg_integer()}
        | {error, {invalid_key, not_a_binary} | {invalid_node_id, term()} | not_networked}.
net_report_failure(_Node, _Key, _NodeId) -> ?NIF_STUB.

%% @doc Sends the runtime's log lines at `Level' or more severe to `Pid' (which replaces any
%% process registered before) as `{macula_dht_log, RustLevel, Target, Message, [{Key, Value}]}',
%% and `{macula_dht_log_dropped, Count}' when its bounded queue overflowed (`native/src/log.rs',
%% `macula_dht_log'). `none' forwards nothing. `{error, {log, Why}}' when another `tracing'
%% subscriber holds the VM.
-spec log_forward(pid(), macula_dht_log:rust_level() | none) ->
          ok | {error, {invalid_level, term()} | {log, binary()}}.
log_forward(_Pid, _Level) -> ?NIF_STUB.

%% @doc Stops sending log lines to `Pid', if it is the process registered.
-spec log_stop(pid()) -> ok.
log_stop(_Pid) -> ?NIF_STUB.
