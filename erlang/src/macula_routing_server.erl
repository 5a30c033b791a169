%% @doc The DHT routing server: a drop-in for Macula's `macula_routing_server'.
%%
%% Same API, return shapes and raw messages as before (see the compatibility contract), but the
%% provider store and the routing table live in the Rust NIF (`macula_dht_nif'). The API functions
%% call the NIF from the caller's own process: reads never wait in this server's mailbox, and
%% writes from many callers only serialise inside the store. The gen_server owns the NIF handle
%% (when it dies the handle closes), answers the raw messages other modules send it, and purges
%% expired records on a timer. Every door (API function, raw call or cast) runs the same
%% `execute/2', so there is one code path per operation.
-module(macula_routing_server).
-behaviour(gen_server).

%% API of the contract
-export([start_link/2,
         add_node/2, remove_node/2, find_closest/3, size/1, get_routing_table/1,
         store_local/3, store/3, get_local/2, delete_local/3, get_all_keys/1,
         find_value/3, find_value_local/2,
         handle_message/2, handle_message_async/2]).
%% Beyond the contract
-export([stats/1]).

-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

%% `size/1' is part of the contract.
-compile({no_auto_import, [size/1]}).

-export_type([node_info/0, provider/0]).

-type server() :: pid() | atom() | {atom(), node()} | {global, term()} | {via, module(), term()}.
-type node_info() :: #{node_id := binary(), _ => _}.
-type provider() :: #{_ => _}.
-type error() :: {error, term()}.

%% What the API needs to reach the running server's NIF handle without a message.
-record(node, {pid :: pid(), handle :: reference(), local_id :: binary(), k :: pos_integer()}).
-record(state, {node :: #node{}, config :: macula_routing_config:config()}).

%% An atom key: its hash is precomputed, and every API call reads this slot.
-define(SLOT, macula_routing_server_node).

%%--------------------------------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------------------------------

%% @doc Starts the server, registered locally as `macula_routing_server'. `Config' takes `k'
%% (bucket size and replication factor, default 20) and `alpha' (default 3), plus the limits of
%% `macula_routing_config'; unknown keys are ignored.
-spec start_link(binary(), map()) -> {ok, pid()} | {error, term()}.
start_link(LocalNodeId, Config) when is_binary(LocalNodeId) ->
    case {macula_routing_config:parse(Config), code:ensure_loaded(macula_dht_nif)} of
        {{ok, Parsed}, {module, _}} ->
            gen_server:start_link({local, ?MODULE}, ?MODULE, {LocalNodeId, Parsed}, []);
        {{error, _} = Error, _} ->
            Error;
        {_, {error, Why}} ->
            {error, {nif_not_loaded, Why}}
    end;
start_link(LocalNodeId, _Config) ->
    {error, {invalid_node_id, LocalNodeId}}.

-spec add_node(server(), node_info()) -> ok | error().
add_node(Server, NodeInfo) -> run(Server, {add_node, NodeInfo}).

-spec remove_node(server(), binary()) -> ok | error().
remove_node(Server, NodeId) -> run(Server, {remove_node, NodeId}).

%% @doc Up to `K' nodes, closest first by XOR distance to `Target'.
-spec find_closest(server(), binary(), non_neg_integer()) -> [node_info()] | error().
find_closest(Server, Target, K) -> run(Server, {find_closest, Target, K}).

-spec size(server()) -> non_neg_integer().
size(Server) -> run(Server, size).

-spec get_routing_table(server()) -> map().
get_routing_table(Server) -> run(Server, get_routing_table).

%% @doc Adds `Provider' under `Key', or replaces in place the provider with the same `node_id'.
-spec store_local(server(), binary(), provider()) -> ok | error().
store_local(Server, Key, Provider) -> run(Server, {store_local, Key, Provider}).

%% @doc `store_local/3', then replication to the k closest peers (none on a single node).
-spec store(server(), binary(), provider()) -> ok | error().
store(Server, Key, Provider) -> run(Server, {store, Key, Provider}).

-spec get_local(server(), binary()) -> {ok, [provider()]} | not_found | error().
get_local(Server, Key) -> run(Server, {get_local, Key}).

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

%% @doc Counters of the store and the table, and the NIF's heap (`nif_allocated_bytes').
-spec stats(server()) -> map().
stats(Server) -> run(Server, stats).

%%--------------------------------------------------------------------------------------------
%% One code path for every door
%%--------------------------------------------------------------------------------------------

%% The running server is reached directly through its handle; any other server by a call.
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

execute({get_local, Key}, #node{handle = H}) ->
    macula_dht_nif:store_get(H, Key);
execute({store_local, Key, Provider}, #node{handle = H}) ->
    macula_dht_nif:store_put(H, Key, Provider);
execute({store, Key, Provider}, #node{handle = H}) ->
    macula_dht_nif:store_put(H, Key, Provider);
execute({delete_local, Key, NodeId}, #node{handle = H}) ->
    macula_dht_nif:store_delete(H, Key, NodeId);
execute({find_value, Key, _K}, #node{handle = H}) ->
    case macula_dht_nif:store_get(H, Key) of
        not_found -> {ok, []};
        Other -> Other
    end;
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
execute(_Unknown, _Node) ->
    {error, unknown_request}.

%% What a DHT message may do to this node.
dispatch_ops(#node{k = K} = Node) ->
    #{k => K,
      closest => fun(Target) -> execute({find_closest, Target, K}, Node) end,
      store => fun(Key, Value) -> execute({store, Key, Value}, Node) end,
      lookup => fun(Key) -> execute({get_local, Key}, Node) end}.

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

init({LocalNodeId, Config}) ->
    %% The handle is monitored by the NIF: it closes when this process dies, however it dies.
    Handle = macula_dht_nif:new(LocalNodeId, Config),
    Node = #node{pid = self(), handle = Handle, local_id = LocalNodeId, k = maps:get(k, Config)},
    persistent_term:put(?SLOT, Node),
    schedule_expiry(Config),
    {ok, #state{node = Node, config = Config}}.

handle_call(Request, _From, #state{node = Node} = State) ->
    {reply, execute(Request, Node), State}.

%% The raw cast `{store, Key, Value}' is a local upsert.
handle_cast({store, Key, Value}, #state{node = Node} = State) ->
    _ = execute({store_local, Key, Value}, Node),
    {noreply, State};
handle_cast({handle_message, Message}, #state{node = Node} = State) ->
    _ = execute({handle_message, Message}, Node),
    {noreply, State};
handle_cast(_Unknown, State) ->
    {noreply, State}.

handle_info(expire, #state{node = #node{handle = H}, config = Config} = State) ->
    _ = macula_dht_nif:store_expire(H),
    schedule_expiry(Config),
    {noreply, State};
handle_info(_Unknown, State) ->
    {noreply, State}.

terminate(_Reason, #state{node = #node{handle = H} = Node}) ->
    case persistent_term:get(?SLOT, undefined) of
        Node -> persistent_term:erase(?SLOT);
        _ -> ok
    end,
    macula_dht_nif:close(H).

schedule_expiry(#{expire_interval_ms := Interval}) ->
    erlang:send_after(Interval, self(), expire).
