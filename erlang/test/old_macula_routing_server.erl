%% @doc Test/bench reference of the OLD Macula `macula_routing_server' (not shipped).
%%
%% A faithful small copy of the old pure-Erlang design, renamed so it can run in one VM beside
%% ours: same API, return shapes and raw messages as the contract, and the old costs and defects
%% on purpose. Every operation goes through this one mailbox; the store is a map
%% `Key => [Provider]' with the old upsert (by `maps:get(node_id, P, undefined)': replace in place,
%% else prepend), no ttl and no expiry; `store/3' only computes the K closest nodes it would
%% replicate to (no transport); `find_value/3' is a local hit or `{ok, []}'.
-module(old_macula_routing_server).
-behaviour(gen_server).

-export([start_link/2, add_node/2, remove_node/2, find_closest/3, size/1, get_routing_table/1,
         store_local/3, store/3, get_local/2, delete_local/3, get_all_keys/1,
         find_value/3, find_value_local/2, handle_message/2, handle_message_async/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

start_link(LocalId, Config) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, {LocalId, Config}, []).

add_node(P, NodeInfo) -> gen_server:call(P, {add_node, NodeInfo}).
remove_node(P, NodeId) -> gen_server:call(P, {remove_node, NodeId}).
find_closest(P, Target, K) -> gen_server:call(P, {find_closest, Target, K}).
size(P) -> gen_server:call(P, size).
get_routing_table(P) -> gen_server:call(P, get_routing_table).
store_local(P, Key, Value) -> gen_server:call(P, {store_local, Key, Value}).
store(P, Key, Value) -> gen_server:call(P, {store, Key, Value}).
get_local(P, Key) -> gen_server:call(P, {get_local, Key}).
delete_local(P, Key, NodeId) -> gen_server:call(P, {delete_local, Key, NodeId}).
get_all_keys(P) -> gen_server:call(P, get_all_keys).
find_value(P, Key, K) -> gen_server:call(P, {find_value, Key, K}).
handle_message(P, Msg) -> gen_server:call(P, {handle_message, Msg}).
handle_message_async(P, Msg) -> gen_server:cast(P, {handle_message, Msg}).

%% @doc Goes through the registered process; `{error, not_found}' on a miss or with no server.
find_value_local(Key, _K) ->
    case catch gen_server:call(?MODULE, {get_local, Key}) of
        {ok, Providers} -> {ok, Providers};
        _ -> {error, not_found}
    end.

init({LocalId, Config}) ->
    K = maps:get(k, Config, 20),
    {ok, #{local_id => LocalId, k => K, alpha => maps:get(alpha, Config, 3),
           table => old_macula_routing_table:new(LocalId, K), storage => #{}}}.

handle_call({add_node, Node}, _From, S = #{table := T}) ->
    {reply, ok, S#{table := old_macula_routing_table:add_node(T, Node)}};
handle_call({remove_node, Id}, _From, S = #{table := T}) ->
    {reply, ok, S#{table := old_macula_routing_table:remove_node(T, Id)}};
handle_call({find_closest, Target, K}, _From, S) ->
    {reply, closest(S, Target, K), S};
handle_call(size, _From, S = #{table := T}) ->
    {reply, old_macula_routing_table:size(T), S};
handle_call(get_routing_table, _From, S = #{table := T}) ->
    {reply, old_macula_routing_table:to_map(T), S};
handle_call({store_local, Key, Value}, _From, S) ->
    {reply, ok, upsert(S, Key, Value)};
handle_call({store, Key, Value}, _From, S = #{k := K}) ->
    _Replicas = closest(S, Key, K),
    {reply, ok, upsert(S, Key, Value)};
handle_call({get_local, Key}, _From, S) ->
    {reply, lookup(S, Key), S};
handle_call({delete_local, Key, NodeId}, _From, S) ->
    {reply, ok, delete(S, Key, NodeId)};
handle_call(get_all_keys, _From, S = #{storage := Storage}) ->
    {reply, {ok, maps:keys(Storage)}, S};
handle_call({find_value, Key, _K}, _From, S) ->
    case lookup(S, Key) of
        {ok, Providers} -> {reply, {ok, Providers}, S};
        not_found -> {reply, {ok, []}, S}
    end;
handle_call({handle_message, Msg}, _From, S) ->
    {Reply, S2} = dispatch(Msg, S),
    {reply, Reply, S2};
handle_call(_Other, _From, S) ->
    {reply, {error, unknown_request}, S}.

handle_cast({store, Key, Value}, S) ->
    {noreply, upsert(S, Key, Value)};
handle_cast({handle_message, Msg}, S) ->
    {_Reply, S2} = dispatch(Msg, S),
    {noreply, S2};
handle_cast(_Other, S) ->
    {noreply, S}.

handle_info(_Other, S) ->
    {noreply, S}.

closest(#{table := T}, Target, K) ->
    old_macula_routing_table:find_closest(T, Target, K).

lookup(#{storage := Storage}, Key) ->
    case Storage of
        #{Key := Providers} -> {ok, Providers};
        _ -> not_found
    end.

%% The old upsert; a non-map value crashes the server (an old defect, kept on purpose).
upsert(S = #{storage := Storage}, Key, Value) ->
    Existing = maps:get(Key, Storage, []),
    S#{storage := Storage#{Key => upsert_list(Existing, Value)}}.

upsert_list(Existing, Value) ->
    case maps:get(node_id, Value, undefined) of
        undefined -> [Value | Existing];
        Id -> replace_or_prepend(Existing, Id, Value)
    end.

replace_or_prepend(Existing, Id, Value) ->
    case lists:any(fun(P) -> provider_id(P) =:= Id end, Existing) of
        true -> [case provider_id(P) =:= Id of true -> Value; false -> P end || P <- Existing];
        false -> [Value | Existing]
    end.

delete(S = #{storage := Storage}, Key, NodeId) ->
    case Storage of
        #{Key := Providers} ->
            case [P || P <- Providers, provider_id(P) =/= NodeId] of
                [] -> S#{storage := maps:remove(Key, Storage)};
                Left -> S#{storage := Storage#{Key := Left}}
            end;
        _ ->
            S
    end.

provider_id(P) when is_map(P) -> maps:get(node_id, P, undefined);
provider_id(_) -> undefined.

%% DHT messages: atom or binary keys and tags, and the old untyped forms.
dispatch(Msg, S = #{k := K}) ->
    case kind(Msg) of
        find_node ->
            {#{type => find_node_reply, nodes => closest(S, field(target, Msg), K)}, S};
        store ->
            {#{type => store_reply, result => ok}, upsert(S, field(key, Msg), field(value, Msg))};
        find_value ->
            {find_value_reply(S, field(key, Msg)), S};
        unknown ->
            {#{type => error, reason => unknown_message}, S}
    end.

find_value_reply(S = #{k := K}, Key) ->
    case lookup(S, Key) of
        {ok, Providers} -> #{type => find_value_reply, result => value, value => Providers};
        not_found -> #{type => find_value_reply, result => nodes, nodes => closest(S, Key, K)}
    end.

kind(Msg) when is_map(Msg) ->
    case field(type, Msg) of
        undefined -> untyped(Msg);
        Tag -> tag(Tag)
    end;
kind(_) ->
    unknown.

tag(T) when T =:= find_node; T =:= <<"find_node">> -> find_node;
tag(T) when T =:= store; T =:= <<"store">> -> store;
tag(T) when T =:= find_value; T =:= <<"find_value">> -> find_value;
tag(_) -> unknown.

untyped(Msg) ->
    case {field(target, Msg), field(key, Msg), field(value, Msg)} of
        {Target, _, _} when Target =/= undefined -> find_node;
        {_, undefined, _} -> unknown;
        {_, _, undefined} -> find_value;
        _ -> store
    end.

field(Name, Msg) ->
    maps:get(Name, Msg, maps:get(atom_to_binary(Name), Msg, undefined)).
