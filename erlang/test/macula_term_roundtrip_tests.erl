%% @doc Stored providers come back exactly: a few hundred random provider maps go through the
%% store and a read that decodes every time (`read_cache => 0'), so through the NIF's term
%% builder, or binary_to_term where it falls back (pids, refs, big integers, ...). "Exactly" is
%% `=:=' and the same external form, which also tells -0.0 from 0.0.
-module(macula_term_roundtrip_tests).

-include_lib("eunit/include/eunit.hrl").

roundtrip_test_() ->
    {setup, fun start/0, fun stop/1,
     fun(Pid) ->
         [{"one provider per key", fun() -> one_per_key(Pid) end},
          {"several providers under a key", fun() -> several_per_key(Pid) end},
          {"edge values", fun() -> edge_values(Pid) end}]
     end}.

start() ->
    catch gen_server:stop(macula_routing_server),
    {ok, Pid} = macula_routing_server:start_link(<<1:256>>, #{read_cache => 0}),
    unlink(Pid),
    Pid.

stop(Pid) ->
    catch gen_server:stop(Pid).

one_per_key(Pid) ->
    rand:seed(exsss, {17, 42, 1}),
    [begin
         P = provider(I),
         Key = <<"one-", I:32>>,
         ok = macula_routing_server:store_local(Pid, Key, P),
         {ok, [Got]} = macula_routing_server:get_local(Pid, Key),
         assert_same(P, Got)
     end || I <- lists:seq(1, 300)].

several_per_key(Pid) ->
    rand:seed(exsss, {17, 42, 2}),
    [begin
         Key = <<"several-", K:32>>,
         Ps = [provider(K * 10 + I) || I <- lists:seq(1, rand:uniform(5))],
         [ok = macula_routing_server:store_local(Pid, Key, P) || P <- Ps],
         {ok, Got} = macula_routing_server:get_local(Pid, Key),
         ?assertEqual(length(Ps), length(Got)),
         [assert_same(P, find(maps:get(node_id, P), Got)) || P <- Ps]
     end || K <- lists:seq(1, 40)].

edge_values(Pid) ->
    Values = ints() ++ floats() ++ atoms() ++
        [[], {}, #{}, <<>>, "", "abc", [1000, 2000], [a | b], [1, 2 | <<"t">>], [[] | []],
         {[], {}, #{}}, #{#{} => [], {} => <<>>, [] => {}}, list_to_tuple(lists:seq(1, 300)),
         maps:from_list([{I, I} || I <- lists:seq(1, 40)]), deep(60), deep(61), deep(62),
         self(), make_ref(), fun lists:map/2, <<1:3>>],
    [begin
         P = #{node_id => <<"edge-", I:32>>, value => V, <<"value">> => [V, {V}, #{V => V}]},
         Key = <<"edge-", I:32>>,
         ok = macula_routing_server:store_local(Pid, Key, P),
         {ok, [Got]} = macula_routing_server:get_local(Pid, Key),
         assert_same(P, Got)
     end || {I, V} <- lists:enumerate(Values)].

assert_same(Stored, Got) ->
    ?assert(Got =:= Stored),
    ?assertEqual(term_to_binary(Stored), term_to_binary(Got)).

find(NodeId, Providers) ->
    [P] = [P || #{node_id := N} = P <- Providers, N =:= NodeId],
    P.

%%--------------------------------------------------------------------------------------------
%% Random providers
%%--------------------------------------------------------------------------------------------

%% `node_id' and `ttl' are the store's own fields: kept out of the random part.
provider(I) ->
    Fields = maps:from_list([{field_key(), value(3)} || _ <- lists:seq(1, rand:uniform(6))]),
    maps:without([ttl, <<"ttl">>, <<"node_id">>], Fields#{node_id => <<I:256>>}).

field_key() ->
    case rand:uniform(3) of
        1 -> rand:bytes(rand:uniform(12));
        _ -> pick([endpoint, metadata, advertised_at, weight, tags, a, 'é', 'with space'])
    end.

value(0) -> leaf();
value(D) ->
    case rand:uniform(10) of
        1 -> [value(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)];
        2 -> list_to_tuple([value(D - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        3 -> maps:from_list([{value(D - 1), value(D - 1)} || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        4 -> lists:foldl(fun(E, T) -> [E | T] end, leaf(), [value(D - 1) || _ <- lists:seq(1, rand:uniform(3))]);
        _ -> leaf()
    end.

leaf() ->
    case rand:uniform(12) of
        1 -> pick(atoms());
        2 -> pick(ints());
        3 -> pick(ints()) + rand:uniform(5) - 3;
        4 -> rand:uniform(1 bsl 40) - (1 bsl 39);
        5 -> pick(floats());
        6 -> (rand:uniform() - 0.5) * math:pow(10, rand:uniform(600) - 300);
        7 -> rand:bytes(rand:uniform(101) - 1);
        8 -> [rand:uniform(256) - 1 || _ <- lists:seq(1, rand:uniform(20))];
        9 -> [rand:uniform(2000) || _ <- lists:seq(1, rand:uniform(5))];
        10 -> pick([[], {}, #{}, <<>>, "", "é", <<"é"/utf8>>]);
        11 -> pick([self(), make_ref(), 1 bsl 70, -(1 bsl 70), ok, ok, ok, ok, ok, ok]);
        _ -> rand:uniform(300) - 150
    end.

pick(L) -> lists:nth(rand:uniform(length(L)), L).

%% Around the edges of small integers (2^59 on 64 bits), of 32-bit ints and of i64/u64.
ints() ->
    Edges = [0, 1 bsl 8, 1 bsl 27, 1 bsl 31, 1 bsl 32, 1 bsl 59, 1 bsl 60, 1 bsl 63, 1 bsl 64, 1 bsl 70],
    [S * (E + D) || E <- Edges, D <- [-1, 0, 1], S <- [1, -1]].

floats() ->
    <<NegZero/float>> = <<16#8000000000000000:64>>,
    [0.0, NegZero, 1.0, -1.5, 0.1, 1.0e300, -1.0e300, 5.0e-324, 2.2250738585072014e-308,
     1.7976931348623157e308].

%% Existing atoms, in latin1 and beyond (those fall back), up to the 255-character limit.
atoms() ->
    [a, ok, true, false, undefined, '', 'with space', 'é', list_to_atom([255, 128]),
     list_to_atom([1000, $a]), list_to_atom(lists:duplicate(255, $x))].

%% A list nested N deep. In an edge provider (reply list, map, list, map) the builder takes up to
%% 60 levels (64 open containers in all) and falls back beyond; the store refuses more than 62.
deep(N) -> lists:foldl(fun(_, Acc) -> [Acc] end, leaf, lists:seq(1, N)).
