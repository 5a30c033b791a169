%% @doc The DHT routing server: a drop-in for Macula's `macula_routing_server'.
%%
%% Same API, return shapes and raw messages as before (see the compatibility contract), but the
%% provider store and the routing table live in the Rust NIF (`macula_dht_nif'). The API functions
%% call the NIF from the caller's own process: reads never wait in this server's mailbox, and
%% writes from many callers only serialise inside the store. The gen_server owns the NIF handle
%% (when it dies the handle closes), answers the raw messages other modules send it, and purges
%% expired records on a timer. Every door (API function, raw call or cast) runs the same
%% `execute/2', so there is one code path per operation.
%%
%% In network mode (`Config' has `listen', see `macula_routing_config') the NIF also runs the
%% node's QUIC side: peers are answered in Rust from the same store, `store/3' replicates to the
%% k closest, `find_value/3' looks up the network when this node holds fewer than K providers
%% (in the caller's process, never in this server, and always within `lookup_timeout_ms'), and
%% `delete_local/3' of a provider this node published removes it everywhere. The node id is then the one bound to the identity
%% key. Processes may `subscribe/2' to peer and lookup events.
%%
%% When the `telemetry' library is loaded at start, stores, network lookups, peers coming and
%% going and refused peer requests are also `telemetry' events (`macula_dht_telemetry').
-module(macula_routing_server).
-behaviour(gen_server).

%% API of the contract
-export([start_link/2,
         add_node/2, remove_node/2, find_closest/3, size/1, get_routing_table/1,
         store_local/3, store/3, get_local/2, delete_local/3, get_all_keys/1,
         find_value/3, find_value_local/2,
         handle_message/2, handle_message_async/2]).
%% Beyond the contract
-export([stats/1, node_id/1, address/1, peers/1, rtt/2, subscribe/2, unsubscribe/1,
         publishers/2, pick/3, report_failure/3]).

-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% `size/1' is part of the contract.
-compile({no_auto_import, [size/1]}).

-export_type([node_info/0, provider/0]).

-type server() :: pid() | atom() | {atom(), node()} | {global, term()} | {via, module(), term()}.
-type node_info() :: #{node_id := binary(), _ => _}.
-type provider() :: #{_ => _}.
-type error() :: {error, term()}.
-type address() :: macula_dht_nif:address().
-type routing_table() :: #{local_node_id := binary(),
                           k := pos_integer(),
                           size := non_neg_integer(),
                           buckets := #{0..255 => [node_info(), ...]}}.
%% What the API asks `execute/2' for; the raw calls of other modules are some of these.
-type request() :: {get_local | publishers, Key :: term()}
                 | {store_local | store, Key :: term(), Provider :: term()}
                 | {delete_local, Key :: term(), NodeId :: term()}
                 | {find_value, Key :: term(), K :: term()}
                 | get_all_keys
                 | {add_node, NodeInfo :: term()}
                 | {remove_node, NodeId :: term()}
                 | {find_closest, Target :: term(), K :: term()}
                 | size
                 | get_routing_table
                 | {handle_message, Message :: term()}
                 | stats
                 | node_id
                 | address
                 | peers
                 | {rtt, NodeId :: term()}
                 | {pick, ServiceId :: term(), Strategy :: term()}
                 | {report_failure, ServiceId :: term(), NodeId :: term()}.
%% Everything `execute/2' answers; each API function's spec says which part is its own.
-type reply() :: ok | not_found | unknown | error()
               | {ok, [provider()] | [binary()] | address() | [{provider(), binary() | local}]
                      | non_neg_integer()}
               | [node_info()]
               | non_neg_integer()
               | binary()
               | routing_table()
               | macula_dht_nif:stats()
               | map().  % the reply to a DHT message

-type event() :: {peer_up | peer_down, node_info()} | {lookup, map()}.
-type event_kind() :: peers | lookups.
-export_type([event/0, event_kind/0]).

%% What the API needs to reach the running server's NIF handle without a message.
-record(node, {pid :: pid(), handle :: macula_dht_nif:handle(), local_id :: binary(),
               k :: pos_integer(),
               %% in network mode: how long a network lookup may take; else `undefined'
               lookup_timeout :: pos_integer() | undefined,
               %% in network mode: when a lookup that got no answer was last logged (ms)
               no_answer_logged :: atomics:atomics_ref() | undefined,
               %% the `telemetry' module, looked for once at start (`macula_dht_telemetry')
               telemetry = none :: macula_dht_telemetry:telemetry()}).
-record(state, {node :: #node{},
                config :: macula_routing_config:config(),
                %% Pid => {Monitor, [event_kind()]}
                subscribers = #{} :: #{pid() => {reference(), [event_kind()]}},
                %% the refusal counters last reported to telemetry
                refused = #{} :: macula_dht_telemetry:refusal_counts()}).

%% Processes subscribed to events at once.
-define(MAX_SUBSCRIBERS, 1024).
%% Largest K of a network find_value: a lookup stops once it knows this many providers.
-define(MAX_WANT, 1 bsl 20).
%% Beyond the lookup timeout, how long a caller waits for a lookup task that died unnoticed.
-define(LOOKUP_GRACE_MS, 1000).
%% Lookups that got no answer are logged at most this often (each is counted in stats/1).
-define(NO_ANSWER_LOG_MS, 10000).

%% An atom key: its hash is precomputed, and every API call reads this slot.
-define(SLOT, macula_routing_server_node).

%%--------------------------------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------------------------------

%% @doc Starts the server, registered locally as `macula_routing_server'. `Config' takes `k'
%% (bucket size and replication factor, default 20) and `alpha' (default 3), plus the limits and
%% network settings of `macula_routing_config'; unknown keys are ignored. `LocalNodeId' may be
%% `auto' (a random id; in network mode the identity's id). In network mode a binary id must be
%% the identity's id.
-spec start_link(binary() | auto, map()) -> {ok, pid()} | {error, term()}.
start_link(LocalNodeId, Config) when is_binary(LocalNodeId); LocalNodeId =:= auto ->
    %% The config is checked against the NIF's settings table: the NIF first.
    case code:ensure_loaded(macula_dht_nif) of
        {module, _} ->
            case macula_routing_config:parse(Config) of
                {ok, Parsed} -> start(LocalNodeId, Parsed);
                {error, _} = Error -> Error
            end;
        {error, Why} ->
            {error, {nif_not_loaded, Why}}
    end;
start_link(LocalNodeId, _Config) ->
    {error, {invalid_node_id, LocalNodeId}}.

%% Everything that can be refused is checked here, before the server exists, so that a bad
%% setting is an `{error, ...}' for the caller rather than an exit through the link.
-spec start(binary() | auto, macula_routing_config:config()) -> {ok, pid()} | {error, term()}.
start(auto, #{network := undefined} = Config) ->
    start(macula_routing_nodeid:generate(), Config);
start(LocalNodeId, #{network := undefined} = Config) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, {LocalNodeId, Config, undefined}, []);
start(LocalNodeId, #{network := #{identity := Path} = Network} = Config) ->
    Settings = net_settings(Network, Config),
    case {macula_dht_nif:identity(Path), macula_dht_nif:net_check(Settings)} of
        {{ok, Id, Key}, ok} when LocalNodeId =:= auto; LocalNodeId =:= Id ->
            gen_server:start_link({local, ?MODULE}, ?MODULE, {Id, Config, Key}, []);
        {{ok, Id, _Key}, ok} ->
            {error, {node_id_mismatch, #{given => LocalNodeId, identity => Id}}};
        {{error, _} = Error, _} ->
            Error;
        {_, {error, _} = Error} ->
            Error
    end.

%% What the NIF's network side reads.
-spec net_settings(macula_routing_config:network(), macula_routing_config:config()) ->
          macula_dht_nif:net_settings().
net_settings(Network, Config) ->
    maps:merge(Network, maps:with([k, alpha, replacements], Config)).

-spec add_node(server(), node_info()) -> ok | error().
add_node(Server, NodeInfo) -> run(Server, {add_node, NodeInfo}).

-spec remove_node(server(), binary()) -> ok | error().
remove_node(Server, NodeId) -> run(Server, {remove_node, NodeId}).

%% @doc Up to `K' nodes, closest first by XOR distance to `Target'.
-spec find_closest(server(), binary(), non_neg_integer()) -> [node_info()] | error().
find_closest(Server, Target, K) -> run(Server, {find_closest, Target, K}).

-spec size(server()) -> non_neg_integer().
size(Server) -> run(Server, size).

-spec get_routing_table(server()) -> routing_table().
get_routing_table(Server) -> run(Server, get_routing_table).

%% @doc Adds `Provider' under `Key', or replaces in place the provider with the same `node_id'.
-spec store_local(server(), binary(), provider()) -> ok | error().
store_local(Server, Key, Provider) -> run(Server, {store_local, Key, Provider}).

%% @doc `store_local/3', then replication to the k closest peers (none on a single node). In
%% network mode the record is published as this server (signed with its key), so a `node_id'
%% that is another node's 32-byte id is refused with `{error, {wrong_publisher, NodeId}}'.
-spec store(server(), binary(), provider()) -> ok | error().
store(Server, Key, Provider) -> run(Server, {store, Key, Provider}).

-spec get_local(server(), binary()) -> {ok, [provider()]} | not_found | error().
get_local(Server, Key) -> run(Server, {get_local, Key}).

%% @doc The providers under `Key' held here, each with its publisher: the 32-byte public key of
%% the node that signed it (records from the network, and those this server published with
%% `store/3' in network mode), or `local' for one stored here without a signature (it is not
%% served to peers). `get_local/2' returns the same providers without it.
-spec publishers(server(), binary()) ->
          {ok, [{provider(), <<_:256>> | local}]} | not_found | error().
publishers(Server, Key) -> run(Server, {publishers, Key}).

-spec delete_local(server(), binary(), binary()) -> ok | error().
delete_local(Server, Key, NodeId) -> run(Server, {delete_local, Key, NodeId}).

-spec get_all_keys(server()) -> {ok, [binary()]}.
get_all_keys(Server) -> run(Server, get_all_keys).

%% @doc The providers of `Key': `{ok, []}' when none are known.
-spec find_value(server(), binary(), pos_integer()) -> {ok, [provider()]} | error().
find_value(Server, Key, K) -> run(Server, {find_value, Key, K}).

%% @doc A local read with no process involved; `{error, not_found}' also when no server runs.
-spec find_value_local(binary(), pos_integer()) -> {ok, [provider()]} | {error, not_found}.
find_value_local(Key, _K) ->
    case persistent_term:get(?SLOT, undefined) of
        #node{handle = Handle} ->
            case macula_dht_nif:store_get(Handle, Key) of
                {ok, Providers} -> {ok, Providers};
                _ -> {error, not_found}
            end;
        undefined ->
            {error, not_found}
    end.

%% @doc Answers a DHT message (find_node, store, find_value) with its reply map.
-spec handle_message(server(), term()) -> map().
handle_message(Server, Message) -> run(Server, {handle_message, Message}).

-spec handle_message_async(server(), term()) -> ok.
handle_message_async(Server, Message) -> gen_server:cast(Server, {handle_message, Message}).

%% @doc Counters: the store (`keys', `records', `bytes', `expired', `rejected' at limits), the
%% table (`nodes'), the NIF's heap (`nif_allocated_bytes'), and the network side (`peers',
%% `requests' and `bad_requests' served, `tombstones', `lookups', `lookup_timeouts',
%% `lookup_p50_us' and `lookup_p99_us' of recent lookups, `suspects' (peers that failed of late),
%% `joined' (whether it knows a peer); zeros and `false' on a single node).
-spec stats(server()) -> macula_dht_nif:stats().
stats(Server) -> run(Server, stats).

%% @doc The node's id (the identity's in network mode).
-spec node_id(server()) -> binary().
node_id(Server) -> run(Server, node_id).

%% @doc The address the node listens on for peers.
-spec address(server()) -> {ok, address()} | {error, not_networked}.
address(Server) -> run(Server, address).

%% @doc The peers of the node's network routing table, `#{node_id, address}' each.
-spec peers(server()) -> [node_info()].
peers(Server) -> run(Server, peers).

%% @doc How long the peer `NodeId' (32 bytes) takes to answer this node: the smoothed round-trip
%% time in microseconds, or `unknown' when it never answered. A request to a peer times out at
%% a multiple of it, so a dead peer holds a lookup about as long as it used to take to answer.
-spec rtt(server(), binary()) ->
          {ok, non_neg_integer()} | unknown
        | {error, not_networked | {invalid_node_id, not_32_bytes}}.
rtt(Server, NodeId) -> run(Server, {rtt, NodeId}).

%% @doc One provider of the service `ServiceId' (its key is `sha256(ServiceId)'), chosen by
%% `Strategy': `round_robin' (each in turn, per service, by `node_id' order), `random',
%% `least_loaded' (smallest numeric `load' in its metadata; without one last) or `nearest'
%% (smallest round-trip time from this node to the node that published it; unknown last). The
%% providers come from one lookup and serve picks for 5 s; those reported with
%% `report_failure/3' are skipped, and when all are, one fresh lookup decides. The same picker
%% as `rust-node ctl pick'. Network mode only, like `rtt/2'; callers with a
%% `macula_service_registry' can pick from its cache instead.
-spec pick(server(), binary(), macula_service_registry:strategy()) ->
          {ok, provider()}
        | {error, no_providers | not_networked | timeout | lookup_failed | overloaded
                | {invalid_service_id, term()} | {invalid_strategy, term()}}.
pick(Server, ServiceId, Strategy) -> run(Server, {pick, ServiceId, Strategy}).

%% @doc The caller could not reach the provider `NodeId' of `ServiceId': `pick/3' skips it for
%% 5 s, twice as long on each report while it is skipped (at most 5 minutes), or until it is
%% advertised again.
-spec report_failure(server(), binary(), binary()) ->
          ok | {error, not_networked | {invalid_service_id, term()} | {invalid_node_id, term()}}.
report_failure(Server, ServiceId, NodeId) -> run(Server, {report_failure, ServiceId, NodeId}).

%% @doc Sends the calling process `{macula_dht_event, Event}' for each event of the given kinds
%% (`peers': `{peer_up, NodeInfo}', `{peer_down, NodeInfo}'; `lookups': `{lookup, Summary}')
%% until `unsubscribe/1' or its exit. A second call replaces the kinds.
-spec subscribe(server(), [event_kind()]) -> ok | error().
subscribe(Server, Kinds) -> gen_server:call(Server, {subscribe, self(), Kinds}).

-spec unsubscribe(server()) -> ok.
unsubscribe(Server) -> gen_server:call(Server, {unsubscribe, self()}).

%%--------------------------------------------------------------------------------------------
%% One code path for every door
%%--------------------------------------------------------------------------------------------

%% The running server is reached directly through its handle; any other server by a call.
-spec run(server(), request()) -> reply().
run(Server, Request) ->
    case persistent_term:get(?SLOT, undefined) of
        #node{pid = Pid} = Node when Server =:= Pid; Server =:= ?MODULE ->
            case execute(Request, Node) of
                closed -> exit({noproc, {gen_server, call, [Server, Request]}});
                Reply -> Reply
            end;
        _ ->
            gen_server:call(Server, Request)
    end.

%% `Request' is a `request()', or anything a raw call sent (`{error, unknown_request}'). `closed'
%% once the owner of the handle is gone.
-spec execute(Request :: term(), #node{}) -> reply() | closed.
execute({get_local, Key}, #node{handle = H}) ->
    macula_dht_nif:store_get(H, Key);
execute({publishers, Key}, #node{handle = H}) ->
    case macula_dht_nif:store_publishers(H, Key) of
        Pairs when is_list(Pairs) -> {ok, Pairs};
        Other -> Other
    end;
execute({store_local, Key, Provider}, #node{handle = H, telemetry = T}) ->
    macula_dht_telemetry:store(T, local, Key,
                               fun() -> macula_dht_nif:store_put(H, Key, Provider) end);
execute({store, Key, Provider}, #node{handle = H, lookup_timeout = undefined, telemetry = T}) ->
    macula_dht_telemetry:store(T, local, Key,
                               fun() -> macula_dht_nif:store_put(H, Key, Provider) end);
execute({store, Key, Provider}, #node{handle = H, telemetry = T}) ->
    macula_dht_telemetry:store(T, replicated, Key,
                               fun() -> macula_dht_nif:net_store(H, Key, Provider) end);
execute({delete_local, Key, NodeId}, #node{handle = H}) ->
    macula_dht_nif:store_delete(H, Key, NodeId);
execute({find_value, Key, _K}, #node{handle = H, lookup_timeout = undefined}) ->
    case macula_dht_nif:store_get(H, Key) of
        not_found -> {ok, []};
        Other -> Other
    end;
execute({find_value, Key, K}, Node) ->
    network_find_value(Node, Key, K);
execute(get_all_keys, #node{handle = H}) ->
    {ok, macula_dht_nif:store_keys(H)};
execute({add_node, NodeInfo}, #node{handle = H}) ->
    macula_dht_nif:table_add(H, NodeInfo);
execute({remove_node, NodeId}, #node{handle = H}) ->
    macula_dht_nif:table_remove(H, NodeId);
execute({find_closest, Target, K}, #node{handle = H}) ->
    case macula_dht_nif:table_closest(H, Target, K) of
        {ok, Nodes} -> Nodes;
        Other -> Other
    end;
execute(size, #node{handle = H}) ->
    macula_dht_nif:table_size(H);
execute(get_routing_table, #node{handle = H, local_id = LocalId, k = K}) ->
    Buckets = macula_dht_nif:table_buckets(H),
    #{local_node_id => LocalId,
      k => K,
      size => macula_dht_nif:table_size(H),
      buckets => maps:from_list(Buckets)};
execute({handle_message, Message}, Node) ->
    macula_routing_dispatch:handle(Message, dispatch_ops(Node));
execute(stats, #node{handle = H}) ->
    macula_dht_nif:stats(H);
execute(node_id, #node{local_id = Id}) ->
    Id;
execute(address, #node{handle = H}) ->
    macula_dht_nif:net_address(H);
execute(peers, #node{handle = H}) ->
    macula_dht_nif:net_peers(H);
execute({rtt, NodeId}, #node{handle = H}) ->
    macula_dht_nif:net_rtt(H, NodeId);
execute({Picking, _ServiceId, _}, #node{lookup_timeout = undefined})
  when Picking =:= pick; Picking =:= report_failure ->
    {error, not_networked};
execute({pick, ServiceId, Strategy}, #node{handle = H} = Node)
  when is_binary(ServiceId), is_atom(Strategy) ->
    Tag = make_ref(),
    case macula_dht_nif:net_pick(H, macula_dht_nif:sha256(ServiceId), Strategy, Tag) of
        ok -> picked(await_lookup(Node, Tag));
        {error, {invalid_strategy, _}} = Error -> Error;
        {error, Reason} when Reason =:= overloaded; Reason =:= not_networked -> {error, Reason}
    end;
execute({report_failure, ServiceId, NodeId}, #node{handle = H})
  when is_binary(ServiceId), is_binary(NodeId) ->
    {ok, _BackoffMs} = macula_dht_nif:net_report_failure(H, macula_dht_nif:sha256(ServiceId),
                                                          NodeId),
    ok;
execute({report_failure, ServiceId, NodeId}, _Node) when is_binary(ServiceId) ->
    {error, {invalid_node_id, NodeId}};
execute({pick, ServiceId, Strategy}, _Node) when is_binary(ServiceId) ->
    {error, {invalid_strategy, Strategy}};
execute({Picking, ServiceId, _}, _Node) when Picking =:= pick; Picking =:= report_failure ->
    {error, {invalid_service_id, ServiceId}};
execute(_Unknown, _Node) ->
    {error, unknown_request}.

%% Answered from the local store when it holds at least K providers, else by a lookup on the
%% runtime whose reply comes by message: within the timeout, or at once as
%% `{error, lookup_failed}' if the task died; the grace period covers anything else. A lookup
%% that no peer answered still returns `{ok, Providers}' (what this node holds), as callers
%% expect, but is logged and counted, so that it is not mistaken for a key nobody provides.
-spec network_find_value(#node{}, Key :: term(), K :: term()) -> {ok, [provider()]} | error().
network_find_value(#node{handle = H} = Node, Key, K)
  when is_integer(K), K > 0, K =< ?MAX_WANT ->
    Tag = make_ref(),
    case macula_dht_nif:net_find_value(H, Key, K, Tag) of
        ok -> await_lookup(Node, Tag);
        Answered -> Answered
    end;
network_find_value(_Node, _Key, K) ->
    {error, {invalid_count, K}}.

%% The outcome of the lookup the NIF runs for `Tag', within the node's lookup timeout.
-spec await_lookup(#node{}, reference()) -> {ok, [provider()]} | error().
await_lookup(#node{lookup_timeout = Timeout} = Node, Tag) ->
    receive
        {macula_dht_lookup, Tag, {no_answer, Providers}} ->
            log_no_answer(Node, length(Providers)),
            {ok, Providers};
        {macula_dht_lookup, Tag, Result} ->
            Result
    after Timeout + ?LOOKUP_GRACE_MS ->
        {error, timeout}
    end.

-spec picked({ok, [provider()]} | error()) -> {ok, provider()} | error().
picked({ok, [Provider]}) -> {ok, Provider};
picked({ok, []}) -> {error, no_providers};
picked({error, _} = Error) -> Error.

%% Logs a lookup that got no answer, at most once per `?NO_ANSWER_LOG_MS' whichever process ran
%% it: an isolated node's callers would otherwise fill the log.
-spec log_no_answer(#node{}, non_neg_integer()) -> ok.
log_no_answer(#node{no_answer_logged = Logged}, Held) ->
    Now = erlang:monotonic_time(millisecond),
    Last = atomics:get(Logged, 1),
    case Now - Last >= ?NO_ANSWER_LOG_MS andalso atomics:compare_exchange(Logged, 1, Last, Now) =:= ok of
        true ->
            logger:warning("macula_dht: a find_value lookup got no answer from any peer; answered "
                           "with the ~b provider(s) held here (stats/1: lookup_failures)", [Held]);
        false ->
            ok
    end.

%% What a DHT message may do to this node.
-spec dispatch_ops(#node{}) -> macula_routing_dispatch:ops().
dispatch_ops(#node{k = K} = Node) ->
    #{closest => fun(Target) -> execute({find_closest, Target, K}, Node) end,
      store => fun(Key, Value) -> execute({store, Key, Value}, Node) end,
      lookup => fun(Key) -> execute({get_local, Key}, Node) end}.

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

-spec init({binary(), macula_routing_config:config(), macula_dht_nif:identity_key() | undefined}) ->
          {ok, #state{}} | {stop, term()}.
init({LocalNodeId, Config, IdentityKey}) ->
    %% In network mode the runtime's log lines go to logger through `macula_dht_log' (one per
    %% VM, stopping with this server); a failure there is logged by it, and not fatal.
    _ = IdentityKey =:= undefined orelse macula_dht_log:ensure_started(),
    %% The handle is monitored by the NIF: it closes when this process dies, however it dies.
    Handle = macula_dht_nif:new(LocalNodeId, Config),
    Node = #node{pid = self(), handle = Handle, local_id = LocalNodeId, k = maps:get(k, Config),
                 telemetry = macula_dht_telemetry:detect()},
    case join(Node, IdentityKey, Config) of
        {ok, Joined} ->
            persistent_term:put(?SLOT, Joined),
            schedule_expiry(Config),
            {ok, events_on(#state{node = Joined, config = Config})};
        {error, Reason} ->
            macula_dht_nif:close(Handle),
            {stop, Reason}
    end.

-spec join(#node{}, macula_dht_nif:identity_key() | undefined, macula_routing_config:config()) ->
          {ok, #node{}} | {error, term()}.
join(Node, undefined, _Config) ->
    {ok, Node};
join(#node{handle = H} = Node, IdentityKey, #{network := Network} = Config) ->
    case macula_dht_nif:net_start(H, IdentityKey, net_settings(Network, Config)) of
        {ok, Address} ->
            {ok, Text} = macula_routing_config:address(Address),
            logger:info("macula_dht: node ~ts listening on ~ts",
                        [macula_routing_nodeid:to_hex(Node#node.local_id), Text]),
            Logged = atomics:new(1, [{signed, true}]),
            atomics:put(Logged, 1, erlang:monotonic_time(millisecond) - ?NO_ANSWER_LOG_MS),
            {ok, Node#node{lookup_timeout = maps:get(lookup_timeout_ms, Network),
                           no_answer_logged = Logged}};
        {error, _} = Error ->
            Error
    end.

%% A network lookup through a raw call runs in a process of its own, so this server stays free.
-spec handle_call(term(), gen_server:from(), #state{}) ->
          {reply, reply() | closed, #state{}} | {noreply, #state{}}.
handle_call({Lookup, _, _} = Request, From, #state{node = Node} = State)
  when Node#node.lookup_timeout =/= undefined, (Lookup =:= find_value orelse Lookup =:= pick) ->
    spawn(fun() -> gen_server:reply(From, execute(Request, Node)) end),
    {noreply, State};
handle_call({subscribe, Pid, Kinds}, _From, State) ->
    {Reply, State1} = subscribe(Pid, Kinds, State),
    {reply, Reply, State1};
handle_call({unsubscribe, Pid}, _From, State) ->
    {reply, ok, unsubscribe(Pid, State)};
handle_call(Request, _From, #state{node = Node} = State) ->
    {reply, execute(Request, Node), State}.

%% The raw cast `{store, Key, Value}' is a local upsert.
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({store, Key, Value}, #state{node = Node} = State) ->
    _ = execute({store_local, Key, Value}, Node),
    {noreply, State};
handle_cast({handle_message, Message}, #state{node = Node} = State) ->
    _ = execute({handle_message, Message}, Node),
    {noreply, State};
handle_cast(_Unknown, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(expire, #state{node = #node{handle = H}, config = Config} = State) ->
    _ = macula_dht_nif:store_expire(H),
    schedule_expiry(Config),
    {noreply, report_refusals(State)};
handle_info({macula_dht_net, {bootstrap, Result}}, State) ->
    case Result of
        {ok, Peers} -> logger:info("macula_dht: joined the network, ~b peers", [Peers]);
        {error, Why} -> logger:warning("macula_dht: bootstrap failed (retried on refresh): ~ts", [Why])
    end,
    {noreply, State};
handle_info({macula_dht_net, Event}, #state{node = Node, subscribers = Subscribers} = State) ->
    macula_dht_telemetry:net_event(Node#node.telemetry, Event),
    Kind = event_kind(Event),
    _ = [Pid ! {macula_dht_event, Event}
         || {Pid, {_, Kinds}} <- maps:to_list(Subscribers), lists:member(Kind, Kinds)],
    {noreply, State};
handle_info({'DOWN', _Ref, process, Pid, _Reason}, State) ->
    {noreply, unsubscribe(Pid, State)};
handle_info(_Unknown, State) ->
    {noreply, State}.

-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{node = #node{handle = H} = Node}) ->
    case persistent_term:get(?SLOT, undefined) of
        Node -> persistent_term:erase(?SLOT);
        _ -> ok
    end,
    macula_dht_nif:close(H).

-spec schedule_expiry(macula_routing_config:config()) -> reference().
schedule_expiry(#{expire_interval_ms := Interval}) ->
    erlang:send_after(Interval, self(), expire).

-spec event_kind(event()) -> event_kind().
event_kind({lookup, _}) -> lookups;
event_kind(_PeerUpOrDown) -> peers.

-spec subscribe(pid(), Kinds :: term(), #state{}) ->
          {ok | {error, {invalid_event_kinds, term()} | too_many_subscribers}, #state{}}.
subscribe(Pid, Kinds, #state{subscribers = Subscribers} = State) ->
    Valid = is_list(Kinds) andalso Kinds =/= [] andalso
        lists:all(fun(K) -> K =:= peers orelse K =:= lookups end, Kinds),
    Known = maps:find(Pid, Subscribers),
    if
        not Valid ->
            {{error, {invalid_event_kinds, Kinds}}, State};
        Known =:= error andalso map_size(Subscribers) >= ?MAX_SUBSCRIBERS ->
            {{error, too_many_subscribers}, State};
        true ->
            Monitor = case Known of
                          {ok, {Kept, _}} -> Kept;
                          error -> erlang:monitor(process, Pid)
                      end,
            {ok, events_on(State#state{subscribers = Subscribers#{Pid => {Monitor, Kinds}}})}
    end.

-spec unsubscribe(pid(), #state{}) -> #state{}.
unsubscribe(Pid, #state{subscribers = Subscribers} = State) ->
    case maps:take(Pid, Subscribers) of
        {{Monitor, _}, Rest} ->
            erlang:demonitor(Monitor, [flush]),
            events_on(State#state{subscribers = Rest});
        error ->
            State
    end.

%% The NIF sends events only while someone listens: a subscriber, or telemetry.
-spec events_on(#state{}) -> #state{}.
events_on(#state{node = #node{handle = H, telemetry = T}, subscribers = Subscribers} = State) ->
    macula_dht_nif:net_events(H, map_size(Subscribers) > 0 orelse T =/= none),
    State.

%% Peers' requests this node refused are only counted (in the NIF): telemetry hears of them
%% from the counters, on each expiry tick, in network mode.
-spec report_refusals(#state{}) -> #state{}.
report_refusals(#state{node = #node{telemetry = none}} = State) ->
    State;
report_refusals(#state{node = #node{lookup_timeout = undefined}} = State) ->
    State;
report_refusals(#state{node = #node{handle = H, telemetry = T}, refused = Seen} = State) ->
    State#state{refused = macula_dht_telemetry:refusals(T, macula_dht_nif:stats(H), Seen)}.
