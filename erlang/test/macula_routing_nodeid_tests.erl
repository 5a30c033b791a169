-module(macula_routing_nodeid_tests).

-include_lib("eunit/include/eunit.hrl").

-define(M, macula_routing_nodeid).

%% An id whose bytes are 0, 1, ..., 31 and its hex forms.
id() -> list_to_binary(lists:seq(0, 31)).
hex_lower() -> "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".
hex_upper() -> string:uppercase(hex_lower()).

%% An id with exactly N leading zero bits (N in 0..255).
id_with_leading_zeros(N) ->
    <<0:N, 1:1, 0:(255 - N)>>.

generate_test() ->
    A = ?M:generate(),
    ?assertEqual(32, byte_size(A)),
    ?assertNotEqual(A, ?M:generate()).

from_binary_test_() ->
    [?_assertEqual({ok, id()}, ?M:from_binary(id())),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<1:248>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<1:264>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(<<1:255>>)),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(binary_to_list(id()))),
     ?_assertEqual({error, invalid_size}, ?M:from_binary(42))].

normalize_test_() ->
    NonHex = binary:copy(<<"zz">>, 32),
    [?_assertEqual(id(), ?M:normalize(id())),
     ?_assertEqual(id(), ?M:normalize(list_to_binary(hex_lower()))),
     ?_assertEqual(id(), ?M:normalize(list_to_binary(hex_upper()))),
     ?_assertEqual(crypto:hash(sha256, NonHex), ?M:normalize(NonHex)),
     ?_assertEqual(crypto:hash(sha256, <<"node-1">>), ?M:normalize(<<"node-1">>)),
     ?_assertEqual(crypto:hash(sha256, <<>>), ?M:normalize(<<>>)),
     ?_assertError(badarg, ?M:normalize("node-1")),
     ?_assertError(badarg, ?M:normalize(undefined))].

distance_test_() ->
    A = id(),
    B = ?M:generate(),
    [?_assertEqual(<<0:256>>, ?M:distance(A, A)),
     ?_assertEqual(?M:distance(A, B), ?M:distance(B, A)),
     ?_assertEqual(<<16#FF, 0:248>>, ?M:distance(<<0:256>>, <<16#FF, 0:248>>)),
     ?_assertEqual(crypto:exor(A, B), ?M:distance(A, B)),
     %% A hex id is the same node as its raw bytes.
     ?_assertEqual(<<0:256>>, ?M:distance(A, list_to_binary(hex_upper()))),
     %% Other lengths are hashed first, so the distance is still 32 bytes.
     ?_assertEqual(crypto:exor(crypto:hash(sha256, <<"a">>), A), ?M:distance(<<"a">>, A)),
     ?_assertError(badarg, ?M:distance(A, nil)),
     ?_assertError(badarg, ?M:distance(1, A))].

leading_zeros_test_() ->
    [?_assertEqual(256, ?M:leading_zeros(<<0:256>>)),
     ?_assertEqual(0, ?M:leading_zeros(<<16#80, 0:248>>)),
     ?_assertEqual(0, ?M:leading_zeros(<<16#FF:8, 0:248>>)),
     ?_assertEqual(7, ?M:leading_zeros(<<1, 0:248>>)),
     ?_assertEqual(15, ?M:leading_zeros(<<0, 1, 0:240>>)),
     ?_assertEqual(255, ?M:leading_zeros(<<1:256>>)),
     ?_assertEqual(0, ?M:leading_zeros(<<>>)),
     ?_assertEqual(8, ?M:leading_zeros(<<0>>)),
     ?_assertError(badarg, ?M:leading_zeros([0, 0])),
     ?_assertError(badarg, ?M:leading_zeros(0)),
     ?_test([?assertEqual(N, ?M:leading_zeros(id_with_leading_zeros(N)))
             || N <- lists:seq(0, 255)])].

compare_and_closer_to_test_() ->
    Target = <<0:256>>,
    Near = <<1:256>>,
    Far = <<16#80, 0:248>>,
    [?_assertEqual(less, ?M:compare(Target, Near, Far)),
     ?_assertEqual(greater, ?M:compare(Target, Far, Near)),
     ?_assertEqual(equal, ?M:compare(Target, Near, Near)),
     ?_assert(?M:closer_to(Target, Near, Far)),
     ?_assertNot(?M:closer_to(Target, Far, Near)),
     ?_assertNot(?M:closer_to(Target, Near, Near)),
     %% The target itself is closest to the target.
     ?_assert(?M:closer_to(Far, Far, Near)),
     ?_assertEqual(less, ?M:compare(Near, Near, Target)),
     %% Distance is big-endian: the first differing byte decides.
     ?_assert(?M:closer_to(Target, <<0, 16#FF:8, 16#FF:240>>, <<1, 0:248>>)),
     ?_assertError(badarg, ?M:compare(Target, Near, far)),
     ?_assertError(badarg, ?M:closer_to(target, Near, Far))].

compare_agrees_with_distance_order_test() ->
    Target = ?M:generate(),
    Ids = [?M:generate() || _ <- lists:seq(1, 50)],
    ByDistance = lists:sort([{?M:distance(Target, Id), Id} || Id <- Ids]),
    ByCompare = lists:sort(fun(A, B) -> ?M:compare(Target, A, B) =/= greater end, Ids),
    ?assertEqual([Id || {_, Id} <- ByDistance], ByCompare).

bucket_index_test_() ->
    Self = <<0:256>>,
    [?_assertEqual(256, ?M:bucket_index(Self, Self)),
     ?_assertEqual(0, ?M:bucket_index(Self, <<16#80, 0:248>>)),
     ?_assertEqual(255, ?M:bucket_index(Self, <<1:256>>)),
     ?_assertEqual(200, ?M:bucket_index(Self, id_with_leading_zeros(200))),
     ?_assertEqual(?M:bucket_index(Self, id()), ?M:bucket_index(id(), Self)),
     ?_assertEqual(256, ?M:bucket_index(<<"peer">>, <<"peer">>)),
     ?_assertError(badarg, ?M:bucket_index(Self, "peer"))].

to_hex_test_() ->
    [?_assertEqual(hex_lower(), ?M:to_hex(id())),
     ?_assertEqual(lists:duplicate(64, $f), ?M:to_hex(<<16#FF:8, -1:248>>)),
     ?_assert(io_lib:printable_latin1_list(?M:to_hex(?M:generate()))),
     ?_assertEqual(64, length(?M:to_hex(?M:generate()))),
     ?_assertEqual("0aff", ?M:to_hex(<<16#0A, 16#FF>>)),
     ?_assertEqual("", ?M:to_hex(<<>>)),
     ?_assertError(badarg, ?M:to_hex(hex_lower()))].

from_hex_test_() ->
    [?_assertEqual({ok, id()}, ?M:from_hex(hex_lower())),
     ?_assertEqual({ok, id()}, ?M:from_hex(hex_upper())),
     ?_assertEqual({ok, id()}, ?M:from_hex(list_to_binary(hex_lower()))),
     ?_assertEqual({ok, id()}, ?M:from_hex(list_to_binary(hex_upper()))),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex(tl(hex_lower()))),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex(hex_lower() ++ "0")),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex("g" ++ tl(hex_lower()))),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex(binary:copy(<<"zz">>, 32))),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex(id())),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex([16#100 | tl(hex_lower())])),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex([$a | $b])),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex([<<"00">> | tl(tl(hex_lower()))])),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex("")),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex(abc)),
     ?_assertEqual({error, invalid_hex}, ?M:from_hex(123))].

hex_round_trip_test() ->
    [begin
         Id = ?M:generate(),
         Hex = ?M:to_hex(Id),
         ?assertEqual({ok, Id}, ?M:from_hex(Hex)),
         ?assertEqual(Id, ?M:normalize(list_to_binary(Hex)))
     end || _ <- lists:seq(1, 20)].
