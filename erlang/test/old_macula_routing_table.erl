%% @doc Test/bench reference of the OLD Macula routing table (not shipped).
%%
%% Reproduces the old pure-Erlang design so the model test and the comparison benchmark can run it
%% beside ours: one plain list per bucket index (old convention: leading zero bits of the XOR
%% distance), capacity K, a known id moves to the tail as most recently seen, a full bucket drops
%% the newcomer, and `find_closest/3' gathers every node of every bucket and sorts them all.
-module(old_macula_routing_table).

-export([new/2, add_node/2, remove_node/2, find_closest/3, size/1, to_map/1]).

%% @doc An empty table around `LocalId' with bucket capacity `K'.
new(LocalId, K) ->
    #{local_id => LocalId, k => K, buckets => #{}}.

%% @doc Adds or refreshes a node (self is ignored; `last_seen' is added when absent).
add_node(T = #{k := K, buckets := Buckets}, Node = #{node_id := Id}) ->
    case index(T, Id) of
        256 ->
            T;
        I ->
            Stamped = maps:merge(#{last_seen => erlang:system_time(millisecond)}, Node),
            T#{buckets := Buckets#{I => bucket_add(maps:get(I, Buckets, []), Stamped, K)}}
    end.

%% @doc Removes a node by id; an unknown id is a no-op.
remove_node(T = #{buckets := Buckets}, Id) ->
    I = index(T, Id),
    case Buckets of
        #{I := Bucket} -> T#{buckets := Buckets#{I := without(Bucket, Id)}};
        _ -> T
    end.

%% @doc The old cost: every node of every bucket, fully sorted by distance, then the first K.
find_closest(#{buckets := Buckets}, Target, K) ->
    All = lists:append(maps:values(Buckets)),
    Sorted = lists:sort([{macula_routing_nodeid:distance(Target, maps:get(node_id, N)), N}
                         || N <- All]),
    [N || {_, N} <- lists:sublist(Sorted, K)].

size(#{buckets := Buckets}) ->
    maps:fold(fun(_, Bucket, Acc) -> Acc + length(Bucket) end, 0, Buckets).

to_map(T) ->
    T.

index(#{local_id := Local}, Id) ->
    macula_routing_nodeid:bucket_index(Local, Id).

bucket_add(Bucket, Node = #{node_id := Id}, K) ->
    case lists:any(fun(N) -> maps:get(node_id, N) =:= Id end, Bucket) of
        true -> without(Bucket, Id) ++ [Node];
        false when length(Bucket) < K -> Bucket ++ [Node];
        false -> Bucket
    end.

without(Bucket, Id) ->
    [N || N <- Bucket, maps:get(node_id, N) =/= Id].
