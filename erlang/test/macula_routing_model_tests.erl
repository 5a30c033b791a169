%% @doc Model-based test: seeded random sequences of routing/store operations applied to ours
%% (`macula_routing_server') and to the old design's reference (`old_macula_routing_server')
%% must give the same result at every step.
%%
%% Pools are small so that ids and keys collide; `k' is large enough that no bucket ever fills
%% (bucket-full behaviour differs by design). On a mismatch the seed and the op index are printed.
-module(macula_routing_model_tests).

-include_lib("eunit/include/eunit.hrl").

-define(SEEDS, lists:seq(1, 20)).
-define(OPS, 300).
-define(K, 64).

model_test_() ->
    [{"seed " ++ integer_to_list(Seed),
      {setup, fun() -> start_both(Seed) end, fun stop_both/1,
       fun(Servers) -> {timeout, 60, ?_test(run(Seed, Servers))} end}}
     || Seed <- ?SEEDS].

%% --- fixture -----------------------------------------------------------------------------------

start_both(Seed) ->
    _ = (catch gen_server:stop(macula_routing_server)),
    _ = (catch gen_server:stop(old_macula_routing_server)),
    LocalId = local_id(Seed),
    Ours = start(macula_routing_server, LocalId),
    Old = try start(old_macula_routing_server, LocalId)
          catch C:R -> gen_server:stop(Ours), erlang:raise(C, R, [])
          end,
    #{ours => Ours, old => Old, local_id => LocalId}.

start(Mod, LocalId) ->
    case Mod:start_link(LocalId, #{k => ?K}) of
        {ok, Pid} -> Pid;
        Other -> erlang:error({start_failed, Mod, Other})
    end.

stop_both(#{ours := Ours, old := Old}) ->
    gen_server:stop(Ours),
    gen_server:stop(Old).

%% Some seeds use a short (hashed) local id; the local id is also in the node pool (self is ignored).
local_id(Seed) when Seed rem 3 =:= 0 -> <<"local-", (integer_to_binary(Seed))/binary>>;
local_id(Seed) -> crypto:hash(sha256, <<"model-local-", Seed:32>>).

%% --- the run -----------------------------------------------------------------------------------

run(Seed, Servers = #{local_id := LocalId}) ->
    _ = rand:seed(exsss, Seed),
    Pools = pools(LocalId),
    lists:foreach(fun(I) -> step(Seed, I, random_op(Pools), Servers) end, lists:seq(1, ?OPS)),
    Final = [size, get_all_keys, {find_closest, LocalId, ?K}]
        ++ [{get_local, Key} || Key <- tuple_to_list(maps:get(keys, Pools))],
    lists:foreach(fun(Op) -> step(Seed, final, Op, Servers) end, Final).

step(Seed, Index, Op, #{ours := Ours, old := Old}) ->
    A = observe(Op, macula_routing_server, Ours),
    B = observe(Op, old_macula_routing_server, Old),
    case A =:= B of
        true ->
            ok;
        false ->
            io:format(user, "~nmodel mismatch: seed ~p, op index ~p~n op: ~p~n ours: ~p~n old:  ~p~n",
                      [Seed, Index, Op, A, B]),
            erlang:error({mismatch, [{seed, Seed}, {op_index, Index}, {op, Op},
                                     {ours, A}, {old, B}]})
    end.

%% The result of one op, made comparable (an exception is a result too).
observe(Op, Mod, Pid) ->
    try comparable(Op, apply_op(Op, Mod, Pid))
    catch C:R -> {raised, C, R}
    end.

apply_op({add_node, Info}, Mod, Pid) -> Mod:add_node(Pid, Info);
apply_op({remove_node, Id}, Mod, Pid) -> Mod:remove_node(Pid, Id);
apply_op({store_local, Key, P}, Mod, Pid) -> Mod:store_local(Pid, Key, P);
apply_op({delete_local, Key, Id}, Mod, Pid) -> Mod:delete_local(Pid, Key, Id);
apply_op({get_local, Key}, Mod, Pid) -> Mod:get_local(Pid, Key);
apply_op({find_closest, Target, K}, Mod, Pid) -> Mod:find_closest(Pid, Target, K);
apply_op(size, Mod, Pid) -> Mod:size(Pid);
apply_op(get_all_keys, Mod, Pid) -> Mod:get_all_keys(Pid).

comparable({find_closest, _, _}, Nodes) when is_list(Nodes) ->
    [maps:remove(last_seen, N) || N <- Nodes];
comparable(get_all_keys, {ok, Keys}) when is_list(Keys) ->
    {ok, lists:sort(Keys)};
comparable(_, Result) ->
    Result.

%% --- generators --------------------------------------------------------------------------------

%% Node ids: the local id, 32-byte ids, short binaries (hashed) and one 64-char hex id (decoded).
%% No two distinct raw ids may normalise to the same 32 bytes.
pools(LocalId) ->
    Raw = [rand:bytes(32) || _ <- lists:seq(1, 14)],
    Short = [<<"n">>, <<"node-a">>, <<"node-b">>, <<"peer.example:4433">>, rand:bytes(20)],
    Hex = list_to_binary(macula_routing_nodeid:to_hex(rand:bytes(32))),
    NodeIds = lists:usort([LocalId, Hex | Raw ++ Short]),
    Normalised = lists:usort([macula_routing_nodeid:normalize(Id) || Id <- NodeIds]),
    ?assertEqual(length(NodeIds), length(Normalised)),
    Keys = [rand:bytes(32), rand:bytes(32), rand:bytes(32), <<"topic.a">>, <<"k">>,
            crypto:hash(sha256, <<"io.macula.echo">>)],
    #{node_ids => list_to_tuple(NodeIds), keys => list_to_tuple(Keys)}.

random_op(Pools) ->
    weighted(rand:uniform(100), Pools).

weighted(R, P) when R =< 25 -> {add_node, node_info(pick(node_ids, P))};
weighted(R, P) when R =< 33 -> {remove_node, pick(node_ids, P)};
weighted(R, P) when R =< 58 -> {store_local, pick(keys, P), provider(pick(node_ids, P))};
weighted(R, P) when R =< 68 -> {delete_local, pick(keys, P), pick(node_ids, P)};
weighted(R, P) when R =< 83 -> {get_local, pick(keys, P)};
weighted(R, _) when R =< 95 -> {find_closest, rand:bytes(32), rand:uniform(10)};
weighted(_, _) -> size.

pick(Pool, Pools) ->
    Tuple = maps:get(Pool, Pools),
    element(rand:uniform(tuple_size(Tuple)), Tuple).

node_info(Id) ->
    Address = {{127, 0, 0, 1}, 4000 + rand:uniform(100)},
    Endpoint = <<"https://h", (integer_to_binary(rand:uniform(9)))/binary, ":9443">>,
    case rand:uniform(3) of
        1 -> #{node_id => Id, address => Address};
        2 -> #{node_id => Id, endpoint => Endpoint};
        3 -> #{node_id => Id, address => Address, endpoint => Endpoint, extra => small_term()}
    end.

provider(Id) ->
    #{node_id => Id,
      endpoint => <<"https://h", (integer_to_binary(rand:uniform(99)))/binary, ":9443">>,
      extra => small_term()}.

small_term() ->
    element(rand:uniform(9), {rand:uniform(1000), -7, 1 bsl 70, 2.5, blue, <<"bin">>, [1, <<"x">>],
                              {v, 1}, #{version => <<"1.0">>}}).
